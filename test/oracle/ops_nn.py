"""Oracle ops for normalisation, activations, softmax and attention."""
import torch
import torch.nn.functional as F
from oracle import op


@op("group_norm")
def group_norm(i, a):
    return F.group_norm(i["x"], int(a["num_groups"]), i.get("weight"), i.get("bias"), a.get("eps", 1e-5))


@op("group_norm_silu")
def group_norm_silu(i, a):
    return F.silu(F.group_norm(i["x"], int(a["num_groups"]), i.get("weight"), i.get("bias"), a.get("eps", 1e-5)))


@op("layer_norm")
def layer_norm(i, a):
    x = i["x"]
    return F.layer_norm(x, (x.shape[-1],), i.get("weight"), i.get("bias"), a.get("eps", 1e-5))


@op("silu")
def silu(i, a):
    return F.silu(i["x"])


@op("gelu")
def gelu(i, a):
    return F.gelu(i["x"], approximate=a.get("approximate", "none"))


@op("softmax")
def softmax(i, a):
    return torch.softmax(i["x"], dim=int(a.get("dim", -1)))


@op("attention")
def attention(i, a):
    """softmax(scale q k^T) v written out (torch 1.13 has no fused SDPA); also
    returns the per-row logsumexp of the scaled scores."""
    q, k, v = i["q"], i["k"], i["v"]
    scale = a.get("scale", q.shape[-1] ** -0.5)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(s, dim=-1), v), torch.logsumexp(s, dim=-1)


@op("gelu_stable")
def gelu_stable(i, a):
    """F.gelu's value through forms that keep relative accuracy for large
    negative x, where float64 1 + erf(x/sqrt2) and 1 + tanh(u) cancel to a few
    digits (x = -8) or to zero: 0.5 x erfc(-x/sqrt2) and x sigmoid(2u)."""
    x = i["x"]
    if a.get("approximate", "none") == "tanh":
        u = (2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)
        return x * torch.sigmoid(2 * u)
    return 0.5 * x * torch.erfc(-x / 2 ** 0.5)
