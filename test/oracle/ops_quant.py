"""Oracle ops for the quantization library (src/quant): the TDQ module, the
quantized conv/linear layers, softplus and PACT, written from the formulas of
So et al. 2023 (TDQ), Esser et al. 2020 (LSQ) and Choi et al. 2018 (PACT),
with PyTorch autograd for the gradients."""
import math

import torch
import torch.nn.functional as F
from oracle import op


def _levels(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _lsq(x, s, bits, signed, axis=None, grad_scale=None):
    """LSQ fake quantization: clamp(round(x / s)) * s with a straight-through
    round and the step gradient scaled by 1/sqrt(n * qmax) (n elements per step).
    axis None: one step for all of x; else s has one entry per index of x's axis."""
    qmin, qmax = _levels(bits, signed)
    per_step = x.numel() // s.numel()
    g = grad_scale if grad_scale is not None else 1.0 / math.sqrt(per_step * qmax)
    s = s * g + (s - s * g).detach()
    if axis is None:
        s = s.reshape([])
    else:
        shape = [1] * x.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    v = torch.clamp(x / s, qmin, qmax)
    v = v + (v.round() - v).detach()
    return v * s


@op("softplus")
def softplus(i, a):
    return F.softplus(i["x"])


@op("tdq_module")
def tdq_module(i, a):
    """s(t) = softplus(MLP(enc)): linear layers w{k}, b{k} with ReLU between them."""
    h = i["enc"]
    n = a["layers"]
    for k in range(n):
        h = F.linear(h, i[f"w{k}"], i[f"b{k}"])
        if k < n - 1:
            h = torch.relu(h)
    return F.softplus(h).reshape(-1)


@op("tdq_encoding")
def tdq_encoding(i, a):
    """[cos(t f), sin(t f)], f_k = max_period^(-k / half): openaimodel's timestep_embedding."""
    t = i["t"]
    half = a["dim"] // 2
    freqs = torch.exp(-math.log(a["max_period"]) * torch.arange(half, dtype=t.dtype) / half)
    args = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _act_quant(x, step, a):
    """Activation fake quantization of a quantized layer: per tensor (one step)
    or per sample (one step per batch element, TDQ), with a zero point."""
    z = a.get("zero_point", 0.0)
    axis = 0 if a["act_granularity"] == "sample" else None
    gs = 1.0 if a.get("act_grad_scale") == "none" else None
    return _lsq(x - z, step, a["bits_a"], a["signed_a"], axis, gs) + z


@op("quant_conv2d")
def quant_conv2d(i, a):
    """y = conv2d(Q_a(x), Q_w(W), b): Q_w per output channel, signed."""
    xq = _act_quant(i["x"], i["act_step"], a)
    wq = _lsq(i["weight"], i["w_step"], a["bits_w"], True, 0)
    return F.conv2d(xq, wq, i["bias"], stride=a.get("stride", 1), padding=a.get("padding", 0))


@op("quant_linear")
def quant_linear(i, a):
    xq = _act_quant(i["x"], i["act_step"], a)
    wq = _lsq(i["weight"], i["w_step"], a["bits_w"], True, 0)
    return F.linear(xq, wq, i["bias"])


@op("quant_conv1x1")
def quant_conv1x1(i, a):
    """nn.Conv1d with kernel 1 on (B, C, L), weight (O, C, 1)."""
    xq = _act_quant(i["x"], i["act_step"], a)
    wq = _lsq(i["weight"], i["w_step"], a["bits_w"], True, 0)
    return F.conv1d(xq, wq, i["bias"])


@op("pact")
def pact(i, a):
    """PACT: clip to [-alpha, alpha] (signed) or [0, alpha], quantize with step
    alpha / qmax, straight-through rounding (d/dalpha: 1 above alpha, -1 below -alpha)."""
    x, alpha = i["x"], i["alpha"].reshape([])
    signed = a["signed"]
    _, qmax = _levels(a["bits"], signed)
    lo = -alpha if signed else torch.zeros_like(alpha)
    c = torch.minimum(torch.maximum(x, lo), alpha)
    s = (alpha / qmax).detach()
    q = torch.round(c.detach() / s) * s
    return c + (q - c).detach()
