"""The blocks that ldm/modules/diffusionmodules/model.py's pixel-space DDPM
UNet (`Model`, ddpm_unet_ref.py) and its first-stage Encoder/Decoder
(autoencoder_ref.py) share, with upstream's state-dict keys: GroupNorm,
nearest-neighbour 2x upsampling, strided-conv or average-pool 2x downsampling,
and single-head spatial self-attention. `groups` is 32 upstream; the
autoencoder fixtures use fewer (tiny widths)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(c, groups=32):
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only
        return F.avg_pool2d(x, 2, 2)


class AttnBlock(nn.Module):
    def __init__(self, c, groups=32):
        super().__init__()
        self.norm = norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # b, n, c
        k = self.k(h).reshape(b, c, hh * ww)  # b, c, n
        v = self.v(h).reshape(b, c, hh * ww)  # b, c, n
        w = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=2)  # b, nq, nk
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)
