"""A PyTorch reference of CompVis latent-diffusion's openaimodel.UNetModel
(with AttentionBlocks, or SpatialTransformers from attention_ref.py when
use_spatial_transformer), written from the upstream
architecture for the parity test: module names and parameter shapes equal
upstream's state-dict keys (input_blocks.1.0.in_layers.2.weight, ...)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention_ref import SpatialTransformer


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def norm(ch):
    return nn.GroupNorm(32, ch)


class Downsample(nn.Module):
    def __init__(self, ch, use_conv, out_ch=None):
        super().__init__()
        out_ch = out_ch or ch
        self.use_conv = use_conv
        self.op = nn.Conv2d(ch, out_ch, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch, use_conv, out_ch=None):
        super().__init__()
        out_ch = out_ch or ch
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, dropout, out_ch=None, use_scale_shift_norm=False, up=False, down=False):
        super().__init__()
        self.out_ch = out_ch or ch
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, self.out_ch, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(ch, False), Upsample(ch, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(ch, False), Downsample(ch, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * self.out_ch if use_scale_shift_norm else self.out_ch))
        self.out_layers = nn.Sequential(norm(self.out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(self.out_ch, self.out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if self.out_ch == ch else nn.Conv2d(ch, self.out_ch, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """QKVAttentionLegacy: heads split the qkv channels as (heads, 3*ch)."""

    def __init__(self, ch, num_heads=1, num_head_channels=-1):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else ch // num_head_channels
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, ch * 3, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, *sp = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *sp)


class Seq(nn.Sequential):
    """TimestepEmbedSequential."""

    def forward(self, x, emb, context=None):
        for m in self:
            if isinstance(m, ResBlock):
                x = m(x, emb)
            elif isinstance(m, SpatialTransformer):
                x = m(x, context)
            else:
                x = m(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True, num_classes=None, num_heads=-1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_spatial_transformer=False, transformer_depth=1, context_dim=None, legacy=True, **_):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = model_channels
        self.num_classes = num_classes
        ted = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, ted)

        # Upstream's per-layer (num_heads, dim_head) rule, num_heads reassigned
        # as it goes (a one-element list stands for the rebound local).
        heads_now = [num_heads]

        def attn(ch, decoder):
            if num_head_channels == -1:
                dim_head = ch // heads_now[0]
            else:
                heads_now[0] = ch // num_head_channels
                dim_head = num_head_channels
            if legacy:
                dim_head = ch // heads_now[0] if use_spatial_transformer else num_head_channels
            if use_spatial_transformer:
                return SpatialTransformer(ch, heads_now[0], dim_head, depth=transformer_depth, context_dim=context_dim)
            return AttentionBlock(ch, num_heads=num_heads_upsample if decoder else heads_now[0], num_head_channels=dim_head)

        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, ted, dropout, mult * model_channels, use_scale_shift_norm)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch, False))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Seq(
                    ResBlock(ch, ted, dropout, ch, use_scale_shift_norm, down=True) if resblock_updown
                    else Downsample(ch, conv_resample)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq(ResBlock(ch, ted, dropout, None, use_scale_shift_norm), attn(ch, False),
                                ResBlock(ch, ted, dropout, None, use_scale_shift_norm))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, dropout, model_channels * mult, use_scale_shift_norm)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch, True))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, ted, dropout, ch, use_scale_shift_norm, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps, y=None, context=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
