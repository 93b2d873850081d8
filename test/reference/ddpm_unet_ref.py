"""A PyTorch reference of the pixel-space DDPM UNet of Ho et al. in the
layout of its PyTorch port (ldm/modules/diffusionmodules/model.py `Model`):
temb.dense, conv_in, down.{i}.block/attn/downsample, mid, up, norm_out,
conv_out. Written from the architecture for the parity test."""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_blocks import AttnBlock, Downsample, Upsample, norm  # noqa: E402


def get_timestep_embedding(t, dim):
    half = dim // 2
    e = math.log(10000) / (half - 1)
    e = torch.exp(torch.arange(half, dtype=torch.float32) * -e)
    e = t.float()[:, None] * e[None, :]
    e = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
    if dim % 2 == 1:
        e = F.pad(e, (0, 1, 0, 0))
    return e


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, temb_channels, dropout):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Model(nn.Module):
    def __init__(self, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, dropout, in_channels, resolution,
                 resamp_with_conv=True):
        super().__init__()
        self.ch, self.temb_ch = ch, ch * 4
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        res, in_mult = resolution, (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            bi, bo = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(bi, bo, self.temb_ch, dropout))
                bi = bo
                if res in attn_resolutions:
                    attn.append(AttnBlock(bi))
            d = nn.Module()
            d.block, d.attn = block, attn
            if i != self.num_resolutions - 1:
                d.downsample = Downsample(bi, resamp_with_conv)
                res //= 2
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(bi, bi, self.temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(bi)
        self.mid.block_2 = ResnetBlock(bi, bi, self.temb_ch, dropout)
        self.up = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            bo, skip = ch * ch_mult[i], ch * ch_mult[i]
            for j in range(num_res_blocks + 1):
                if j == num_res_blocks:
                    skip = ch * in_mult[i]
                block.append(ResnetBlock(bi + skip, bo, self.temb_ch, dropout))
                bi = bo
                if res in attn_resolutions:
                    attn.append(AttnBlock(bi))
            u = nn.Module()
            u.block, u.attn = block, attn
            if i != 0:
                u.upsample = Upsample(bi, resamp_with_conv)
                res *= 2
            self.up.insert(0, u)
        self.norm_out = norm(bi)
        self.conv_out = nn.Conv2d(bi, out_ch, 3, 1, 1)

    def forward(self, x, t):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](get_timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for i in range(self.num_resolutions):
            for j in range(self.num_res_blocks):
                h = self.down[i].block[j](hs[-1], temb)
                if len(self.down[i].attn) > 0:
                    h = self.down[i].attn[j](h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                hs.append(self.down[i].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.num_resolutions)):
            for j in range(self.num_res_blocks + 1):
                h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i].attn) > 0:
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
