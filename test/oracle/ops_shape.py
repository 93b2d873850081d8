"""Oracle ops for shape ops, pooling, embedding and fake quantization."""
import math

import torch
import torch.nn.functional as F
from oracle import op


@op("cat")
def cat(i, a):
    xs = [i[f"x{k}"] for k in range(len(i))]
    return torch.cat(xs, dim=a["dim"])


@op("permute")
def permute(i, a):
    return i["x"].permute(*a["dims"])


@op("narrow")
def narrow(i, a):
    return i["x"].narrow(a["dim"], a["start"], a["length"])


@op("embedding")
def embedding(i, a):
    return F.embedding(i["indices"].long(), i["weight"])


@op("upsample_nearest2x")
def upsample_nearest2x(i, a):
    return F.interpolate(i["x"], scale_factor=2, mode="nearest")


@op("avg_pool2d")
def avg_pool2d(i, a):
    return F.avg_pool2d(i["x"], a["kernel"], a["stride"])


def _levels(a):
    b = a["bits"]
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if a["signed"] else (0, 2 ** b - 1)


def _step_view(x, s, a):
    """s laid over x: per-tensor as is, per-channel/sample along a['axis']."""
    if a["granularity"] == "tensor":
        return s.reshape([])
    axis = a.get("axis", 0) % x.dim()
    shape = [1] * x.dim()
    shape[axis] = -1
    return s.reshape(shape)


@op("fake_quant")
def fake_quant(i, a):
    """The forward formula, literally: clamp(round(x / s), qmin, qmax) * s."""
    qmin, qmax = _levels(a)
    s = _step_view(i["x"], i["step"], a)
    return torch.clamp(torch.round(i["x"] / s), qmin, qmax) * s


@op("fake_quant_lsq")
def fake_quant_lsq(i, a):
    """LSQ as in Esser et al.: gradient-scaled step, clamp, round with a
    straight-through estimator; autograd gives d/dx and d/dstep."""
    x, s = i["x"], i["step"]
    qmin, qmax = _levels(a)
    per_step = x.numel() // s.numel()
    g = a["grad_scale"] if "grad_scale" in a else 1.0 / math.sqrt(per_step * qmax)
    s = s * g + (s - s * g).detach()
    s = _step_view(x, s, a)
    v = torch.clamp(x / s, qmin, qmax)
    v = v + (v.round() - v).detach()
    return v * s
