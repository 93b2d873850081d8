"""Checks the PyTorch restatements used for the cross-attention fixtures
(attention_ref.SpatialTransformer, openaimodel_ref.UNetModel with
use_spatial_transformer) against the upstream modules themselves: same
state-dict keys and shapes, identical outputs on shared random weights.
Not part of the test suite (upstream is not vendored); run by hand:

  LDM_SRC=/path/to/latent-diffusion-checkout /usr/bin/python3 test/reference/check_xattn_upstream.py

Upstream imports einops and omegaconf, which Debian's python3 lacks: when
they are missing, minimal stand-ins (the four rearrange patterns attention.py
uses; an empty ListConfig) are written to a temporary directory."""
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

EINOPS = '''
def rearrange(t, pat, **kw):
    if pat == "b n (h d) -> (b h) n d":
        b, n, hd = t.shape; h = kw["h"]
        return t.reshape(b, n, h, hd // h).permute(0, 2, 1, 3).reshape(b * h, n, hd // h)
    if pat == "(b h) n d -> b n (h d)":
        bh, n, d = t.shape; h = kw["h"]
        return t.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)
    if pat == "b c h w -> b (h w) c":
        b, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if pat == "b (h w) c -> b c h w":
        b, hw, c = t.shape
        return t.reshape(b, kw["h"], kw["w"], c).permute(0, 3, 1, 2)
    raise NotImplementedError(pat)


def repeat(*a, **k):
    raise NotImplementedError("einops.repeat stand-in")
'''


def stand_ins():
    d = tempfile.mkdtemp(prefix="xattn-standins-")
    for mod, files in (("einops", {"__init__.py": EINOPS}),
                       ("omegaconf", {"__init__.py": "", "listconfig.py": "class ListConfig(list):\n    pass\n"})):
        try:
            __import__(mod)
        except ImportError:
            os.makedirs(os.path.join(d, mod))
            for name, text in files.items():
                with open(os.path.join(d, mod, name), "w") as f:
                    f.write(text)
    sys.path.insert(0, d)


def same(up, ref, args_up, args_ref, what):
    a, b = up.state_dict(), ref.state_dict()
    assert [(k, tuple(v.shape)) for k, v in a.items()] == [(k, tuple(v.shape)) for k, v in b.items()], f"{what}: keys/shapes differ"
    sd = {k: torch.randn_like(v) * 0.2 for k, v in a.items()}
    up.load_state_dict(sd)
    ref.load_state_dict(sd)
    up.eval()
    ref.eval()
    with torch.no_grad():
        d = (up(*args_up[0], **args_up[1]) - ref(*args_ref)).abs().max().item()
    print(f"{what}: {len(a)} keys, max |diff| {d:.3g}")
    assert d <= 1e-5, what


def main():
    src = os.environ.get("LDM_SRC")
    if not src or not os.path.isdir(os.path.join(src, "ldm")):
        sys.exit("set LDM_SRC to a checkout of CompVis/latent-diffusion")
    stand_ins()
    sys.path.insert(0, src)
    sys.path.insert(0, HERE)
    from ldm.modules.attention import SpatialTransformer as UpST
    from ldm.modules.diffusionmodules.openaimodel import UNetModel as UpUNet
    import attention_ref
    from openaimodel_ref import UNetModel as RefUNet

    torch.manual_seed(0)
    x, c = torch.randn(2, 32, 4, 3), torch.randn(2, 5, 12)
    same(UpST(32, 2, 8, depth=2, context_dim=12), attention_ref.SpatialTransformer(32, 2, 8, depth=2, context_dim=12),
         ((x, c), {}), (x, c), "SpatialTransformer")
    base = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, channel_mult=[1, 2])
    cases = [dict(attention_resolutions=[1, 2], num_heads=4, use_spatial_transformer=True, context_dim=16),
             dict(attention_resolutions=[2], num_head_channels=16, transformer_depth=2, num_classes=3, resblock_updown=True,
                  use_scale_shift_norm=True, use_spatial_transformer=True, context_dim=16),
             dict(attention_resolutions=[1, 2], num_heads=4, num_heads_upsample=2, use_spatial_transformer=True,
                  context_dim=16, legacy=False),
             dict(attention_resolutions=[1, 2], num_head_channels=8, use_spatial_transformer=True, context_dim=16, legacy=False),
             dict(attention_resolutions=[1, 2], num_heads=4, num_heads_upsample=2, legacy=False),
             dict(attention_resolutions=[1, 2], num_heads=2, num_heads_upsample=1)]
    for i, extra in enumerate(cases):
        cfg = dict(base, **extra)
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 500.0])
        ctx = torch.randn(2, 3, 16) if cfg.get("context_dim") else None
        y = torch.tensor([0, 2]) if cfg.get("num_classes") else None
        same(UpUNet(**cfg), RefUNet(**cfg), ((x, t), {"context": ctx, "y": y}), (x, t, y, ctx), f"UNetModel case {i}")


if __name__ == "__main__":
    main()
