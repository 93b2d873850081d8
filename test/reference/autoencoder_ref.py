"""PyTorch reference of the first-stage autoencoders of CompVis
latent-diffusion (ldm.modules.diffusionmodules.model Encoder/Decoder,
ldm.models.autoencoder AutoencoderKL / VQModel / VQModelInterface,
ldm.modules.distributions DiagonalGaussianDistribution, taming's
VectorQuantizer2), restated from reading upstream, with upstream's
state-dict keys. Used only to make the committed fixtures of
test/models/autoencoder*.test.ts; the tests need no PyTorch.

Regenerate the fixtures (Debian's python3 with python3-torch 1.13):

    /usr/bin/python3 test/reference/autoencoder_ref.py test/fixtures/autoencoder

Each case writes CASE.io.safetensors: inputs and reference outputs, with
metadata "config" (JSON) and "weights" (the state dict's [key, shape] list in
upstream's order). The weights themselves are not stored: they come from a
splitmix64 hash of (seed, position) by the rule in hashed_value(), which
test/models/autoencoder_fixture.ts repeats bit for bit (the VQ codebook,
fitted to the latents, is stored as "codebook"). The only departure
from upstream is `norm_num_groups` (upstream hard-codes GroupNorm(32, ...)),
which lets the fixtures use tiny widths (ch 8); 32 is the default.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from model_blocks import AttnBlock, Downsample, Upsample, norm  # noqa: E402


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, dropout, groups):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.norm1 = norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


def attn(c, kind, groups):
    if kind == "vanilla":
        return AttnBlock(c, groups)
    if kind == "none":
        return nn.Identity()
    raise ValueError(kind)


class Encoder(nn.Module):
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                 double_z=True, dropout=0.0, resamp_with_conv=True, attn_type="vanilla", norm_num_groups=32, **_):
        super().__init__()
        g = norm_num_groups
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        mult = (1,) + tuple(ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            cin, cout = ch * mult[i], ch * ch_mult[i]
            for _j in range(num_res_blocks):
                lvl.block.append(ResnetBlock(cin, cout, dropout, g))
                cin = cout
                if res in attn_resolutions:
                    lvl.attn.append(attn(cin, attn_type, g))
            if i != len(ch_mult) - 1:
                lvl.downsample = Downsample(cin, resamp_with_conv)
                res //= 2
            self.down.append(lvl)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(cin, cin, dropout, g)
        self.mid.attn_1 = attn(cin, attn_type, g)
        self.mid.block_2 = ResnetBlock(cin, cin, dropout, g)
        self.norm_out = norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, lvl in enumerate(self.down):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels,
                 dropout=0.0, resamp_with_conv=True, attn_type="vanilla", give_pre_end=False, tanh_out=False,
                 norm_num_groups=32, **_):
        super().__init__()
        g = norm_num_groups
        self.give_pre_end, self.tanh_out = give_pre_end, tanh_out
        n = len(ch_mult)
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(cin, cin, dropout, g)
        self.mid.attn_1 = attn(cin, attn_type, g)
        self.mid.block_2 = ResnetBlock(cin, cin, dropout, g)
        levels = [None] * n
        for i in reversed(range(n)):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            cout = ch * ch_mult[i]
            for _j in range(num_res_blocks + 1):
                lvl.block.append(ResnetBlock(cin, cout, dropout, g))
                cin = cout
                if res in attn_resolutions:
                    lvl.attn.append(attn(cin, attn_type, g))
            if i != 0:
                lvl.upsample = Upsample(cin, resamp_with_conv)
                res *= 2
            levels[i] = lvl
        # Registered in level order (0 first) although built from the top.
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(cin, g)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(len(self.up))):
            lvl = self.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(swish(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class Gaussian:
    def __init__(self, moments):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, eps):
        return self.mean + self.std * eps

    def kl(self):
        return 0.5 * torch.sum(self.mean ** 2 + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def nll(self, x):
        return 0.5 * torch.sum(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.var, dim=[1, 2, 3])


class AutoencoderKL(nn.Module):
    def __init__(self, ddconfig, embed_dim):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        zc = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * zc, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, zc, 1)

    def encode(self, x):
        return Gaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


class KLLoss(nn.Module):
    """LPIPSWithDiscriminator's generator loss with perceptual_weight = 0 and
    the discriminator not yet started (global_step < disc_start)."""

    def __init__(self, kl_weight, logvar_init=0.0):
        super().__init__()
        self.kl_weight = kl_weight
        self.logvar = nn.Parameter(torch.ones(()) * logvar_init)

    def forward(self, x, xrec, post):
        rec = torch.abs(x - xrec)
        nll = rec / torch.exp(self.logvar) + self.logvar
        nll = torch.sum(nll) / nll.shape[0]
        kl = torch.sum(post.kl()) / x.shape[0]
        return nll + self.kl_weight * kl


class VectorQuantizer(nn.Module):
    def __init__(self, n_e, e_dim, beta=0.25, legacy=True, sane_index_shape=False):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy, self.sane = n_e, e_dim, beta, legacy, sane_index_shape
        self.embedding = nn.Embedding(n_e, e_dim)

    def distances(self, z):
        zf = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim)
        w = self.embedding.weight
        return torch.sum(zf ** 2, dim=1, keepdim=True) + torch.sum(w ** 2, dim=1) - 2 * zf @ w.t()

    def forward(self, z):
        zp = z.permute(0, 2, 3, 1).contiguous()
        idx = torch.argmin(self.distances(z), dim=1)
        zq = self.embedding(idx).view(zp.shape)
        if self.legacy:
            loss = torch.mean((zq.detach() - zp) ** 2) + self.beta * torch.mean((zq - zp.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((zq.detach() - zp) ** 2) + torch.mean((zq - zp.detach()) ** 2)
        zq = zp + (zq - zp).detach()
        zq = zq.permute(0, 3, 1, 2).contiguous()
        if self.sane:
            idx = idx.reshape(z.shape[0], z.shape[2], z.shape[3])
        return zq, loss, (None, None, idx)


class VQModel(nn.Module):
    def __init__(self, ddconfig, n_embed, embed_dim):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode_to_prequant(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))


MASK = (1 << 64) - 1


def hash_uniform(seed, start, n):
    """n numbers in [0, 1): splitmix64 of (seed, start + i), as hash64 in
    src/tensor/random.ts, so the tests rebuild the weights bit for bit."""
    with np.errstate(over="ignore"):
        c = np.arange(start, start + n, dtype=np.uint64)
        z = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + c + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def hashed_value(name, shape, u):
    """The fixture weights from uniform u (float64), by the rule that
    test/models/autoencoder_fixture.ts repeats: every parameter random (biases
    and norms too) so every path counts."""
    if name.endswith("weight") and len(shape) > 1:
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * math.sqrt(3.0 / fan_in)
    elif "norm" in name and name.endswith("weight"):
        v = 1.0 + (2.0 * u - 1.0) * 0.2
    else:
        v = (2.0 * u - 1.0) * 0.2
    return v.astype(np.float32)


def hashed_fill(m, seed, skip=()):
    """Sets every state-dict tensor but those named in `skip` from the hash, in
    state-dict order; returns the manifest [[key, shape], ...] that the io
    file's metadata carries."""
    manifest, at = [], 0
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if name in skip:
                continue
            u = hash_uniform(seed, at, t.numel())
            at += t.numel()
            t.copy_(torch.from_numpy(hashed_value(name, list(t.shape), u).reshape(t.shape)))
            manifest.append([name, list(t.shape)])
    return manifest


def np32(t):
    return t.detach().contiguous().numpy().astype(np.float32)


GRAD_KEYS = ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.mid.attn_1.q.weight",
             "quant_conv.weight", "post_quant_conv.bias", "decoder.mid.attn_1.proj_out.weight",
             "decoder.up.0.block.0.conv1.weight", "decoder.conv_out.weight"]


def kl_case(name, ddconfig, embed_dim, batch, seed, outdir):
    torch.manual_seed(seed)
    m = AutoencoderKL(ddconfig, embed_dim)
    manifest = hashed_fill(m, seed)
    res, cin = ddconfig["resolution"], ddconfig["in_channels"]
    x = torch.randn(batch, cin, res, res)
    post = m.encode(x)
    moments = m.quant_conv(m.encoder(x))
    eps = torch.randn_like(post.mean)
    z = post.sample(eps)
    dec = m.decode(post.mean)
    io = {"x": x, "moments": moments, "mode": post.mean, "std": post.std, "kl": post.kl(), "eps": eps,
          "nll": post.nll(z), "dec_mode": dec}
    # The training loss (with z sampled from eps) and gradients of a few
    # parameters through every kind of block.
    loss_fn = KLLoss(kl_weight=1e-2, logvar_init=0.25)
    loss = loss_fn(x, m.decode(z), post)
    m.zero_grad()
    loss.backward()
    io["loss"] = loss.reshape(1)
    params = dict(m.named_parameters())
    for k in GRAD_KEYS:
        io["grad." + k] = params[k].grad
    io["grad.loss.logvar"] = loss_fn.logvar.grad.reshape(1)
    meta = {"config": json.dumps({"kind": "kl", "ddconfig": ddconfig, "embed_dim": embed_dim, "kl_weight": 1e-2,
                                  "logvar_init": 0.25, "seed": seed}), "weights": json.dumps(manifest)}
    save(outdir, name, io, meta)


def vq_case(name, ddconfig, n_embed, embed_dim, batch, seed, outdir):
    torch.manual_seed(seed)
    m = VQModel(ddconfig, n_embed, embed_dim)
    manifest = hashed_fill(m, seed)
    res, cin = ddconfig["resolution"], ddconfig["in_channels"]
    x = torch.randn(batch, cin, res, res)
    with torch.no_grad():
        h = m.encode_to_prequant(x)
        # A codebook on the scale of the latents, so that the choice matters.
        m.quantize.embedding.weight.copy_(torch.randn(n_embed, embed_dim) * h.std() + h.mean())
        d = m.quantize.distances(h)
        top2 = torch.topk(d, 2, dim=1, largest=False).values
        margin = (top2[:, 1] - top2[:, 0]).min().item()
        # Indices must be compared exactly: no near-ties allowed.
        assert margin > 1e-4 * d.abs().max().item(), f"{name}: near-tie in the codebook search; change the seed"
        print(f"{name}: smallest top-2 distance margin {margin:.3g} (max |d| {d.abs().max().item():.3g})")
        quant, qloss, (_, _, ind) = m.quantize(h)
        dec = m.decode(quant)
        dec_noq = m.decode(h)
    io = {"x": x, "h": h, "quant": quant, "qloss": qloss.reshape(1), "indices": ind.int(), "dec": dec,
          "dec_not_quantized": dec_noq, "codebook": m.quantize.embedding.weight}
    meta = {"config": json.dumps({"kind": "vq", "ddconfig": ddconfig, "n_embed": n_embed, "embed_dim": embed_dim,
                                  "seed": seed}), "weights": json.dumps(manifest)}
    save(outdir, name, io, meta)


def quantizer_case(outdir):
    """The quantizer alone: the loss gradients, legacy and not."""
    torch.manual_seed(11)
    io = {}
    z0 = torch.randn(2, 4, 3, 5)
    w0 = torch.randn(16, 4) * 0.8
    g = torch.randn(2, 4, 3, 5)
    io["z"], io["embedding"], io["g"] = z0, w0, g
    for legacy in (True, False):
        q = VectorQuantizer(16, 4, beta=0.25, legacy=legacy, sane_index_shape=True)
        with torch.no_grad():
            q.embedding.weight.copy_(w0)
        z = z0.clone().requires_grad_(True)
        zq, loss, (_, _, ind) = q(z)
        # L = sum(zq * g) + loss: the straight-through part and the losses.
        (torch.sum(zq * g) + loss).backward()
        tag = "legacy" if legacy else "fixed"
        io[f"{tag}.quant"], io[f"{tag}.loss"], io[f"{tag}.indices"] = zq, loss.reshape(1), ind.int()
        io[f"{tag}.grad_z"], io[f"{tag}.grad_embedding"] = z.grad, q.embedding.weight.grad
    st.save(os.path.join(outdir, "quantizer.io.safetensors"),
            {k: (v.numpy() if v.dtype == torch.int32 else np32(v)) for k, v in io.items()})


def save(outdir, name, io, meta):
    st.save(os.path.join(outdir, f"{name}.io.safetensors"),
            {k: (v.numpy() if v.dtype == torch.int32 else np32(v)) for k, v in io.items()}, meta)


def dd(ch_mult, attn_resolutions, resolution, z_channels, double_z, **kw):
    c = {"double_z": double_z, "z_channels": z_channels, "resolution": resolution, "in_channels": 3, "out_ch": 3,
         "ch": 8, "ch_mult": ch_mult, "num_res_blocks": 2, "attn_resolutions": attn_resolutions, "dropout": 0.0,
         "norm_num_groups": 4}
    c.update(kw)
    return c


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    # The released configs' ch_mult (kl-f4, kl-f8, kl-f16, vq-f4, vq-f8) at tiny widths.
    kl_case("kl_f4", dd([1, 2, 4], [], 16, 3, True), 3, 2, 1, outdir)
    kl_case("kl_f8", dd([1, 2, 4, 4], [], 16, 4, True), 4, 2, 2, outdir)
    kl_case("kl_f16", dd([1, 1, 2, 2, 4], [4], 32, 4, True), 4, 1, 3, outdir)
    vq_case("vq_f4", dd([1, 2, 4], [], 16, 3, False, attn_type="none"), 64, 3, 2, 4, outdir)
    vq_case("vq_f8", dd([1, 2, 2, 4], [4], 32, 4, False), 128, 4, 1, 6, outdir)
    quantizer_case(outdir)


if __name__ == "__main__":
    main()
