"""Oracle ops for the evaluation code: padded pooling and bilinear resizing
(torch.nn.functional in float64), and the TF1 resize written out from its
definition (torch has no such mode)."""
import torch
import torch.nn.functional as F
from oracle import op


@op("max_pool2d")
def max_pool2d(i, a):
    return F.max_pool2d(i["x"], a["kernel"], a["stride"], a["padding"])


@op("avg_pool2d_padded")
def avg_pool2d_padded(i, a):
    return F.avg_pool2d(i["x"], a["kernel"], a["stride"], a["padding"], count_include_pad=a["count_include_pad"])


def _tf1_axis(n, n_out, dtype):
    # TF1 resize_bilinear, align_corners=False, half_pixel_centers=False.
    src = torch.arange(n_out, dtype=dtype) * (n / n_out)
    i0 = torch.clamp(torch.floor(src).long(), max=n - 1)
    i1 = torch.clamp(i0 + 1, max=n - 1)
    return i0, i1, src - i0.to(dtype)


@op("resize_bilinear")
def resize_bilinear(i, a):
    x = i["x"]
    h, w = a["size"]
    mode = a.get("mode", "half_pixel")
    if mode == "half_pixel":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if mode == "align_corners":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
    r0, r1, lr = _tf1_axis(x.shape[2], h, x.dtype)
    c0, c1, lc = _tf1_axis(x.shape[3], w, x.dtype)
    lr = lr.view(-1, 1)
    top = x[:, :, r0, :]
    bot = x[:, :, r1, :]
    rows = top * (1 - lr) + bot * lr
    return rows[:, :, :, c0] * (1 - lc) + rows[:, :, :, c1] * lc
