"""Oracle ops for matmul, linear, gemm and conv2d (computed in float64)."""
import torch
import torch.nn.functional as F
from oracle import op


def _t(x, trans):
    return x.transpose(-1, -2) if trans else x


@op("matmul")
def matmul(i, a):
    # torch.matmul broadcasts a 2-D operand over the batch like the engine does.
    return torch.matmul(_t(i["a"], a.get("transA", False)), _t(i["b"], a.get("transB", False)))


@op("gemm")
def gemm(i, a):
    out = a.get("alpha", 1.0) * (_t(i["a"], a.get("transA", False)) @ _t(i["b"], a.get("transB", False)))
    if i.get("c") is not None:
        out = out + a.get("beta", 0.0) * i["c"]
    return out


@op("linear")
def linear(i, a):
    return F.linear(i["x"], i["weight"], i.get("bias"))


@op("conv2d")
def conv2d(i, a):
    return F.conv2d(i["x"], i["weight"], i.get("bias"), stride=a.get("stride", 1), padding=a.get("padding", 0))
