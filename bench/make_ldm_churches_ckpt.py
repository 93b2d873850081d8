"""A random-weight checkpoint shaped like CompVis's LSUN-Churches LDM
(configs/ldm-churches.yaml: the 295M-parameter UNet of lsun_churches-ldm-kl-8
and the KL-f8 autoencoder), written by torch.save as a Lightning checkpoint
of upstream's LatentDiffusion:

  state_dict: model.diffusion_model.*   (openaimodel_ref.UNetModel)
              first_stage_model.*       (autoencoder_ref.AutoencoderKL: encoder, decoder, quant convs)
              scale_factor              (the scale_by_std buffer)
              betas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod (the config's schedule)
              model_ema.*               only with --ema (LitEma: doubles the UNet's bytes)
  plus global_step / epoch.

The pretrained weights cannot be downloaded here; this is for the loader's
memory and for bench/ldm_churches.ts, which compares against PyTorch on the
same weights. About 1.5 GB (fp32): write it outside the repository.

Usage (Debian's python3 with python3-torch 1.13):
    /usr/bin/python3 bench/make_ldm_churches_ckpt.py /work/bench-cache/ldm-churches-random.ckpt [--ema] [--seed 0]

Weights: PyTorch's default initialisation of the reference modules, except
that weights left all-zero (upstream zero-initialises some output convs)
get N(0, 0.02), so every path counts; fp32 throughout.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "reference"))
from autoencoder_ref import AutoencoderKL  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402

# configs/ldm-churches.yaml (the UNet and first stage of lsun_churches-ldm-kl-8)
UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=192, attention_resolutions=[1, 2, 4, 8],
            num_res_blocks=2, channel_mult=[1, 2, 2, 4, 4], num_heads=8, use_scale_shift_norm=True,
            resblock_updown=True)
DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)
EMBED_DIM = 4
T, LS, LE = 1000, 0.0015, 0.0155
SCALE_FACTOR = 0.22


def build(seed):
    torch.manual_seed(seed)
    unet = UNetModel(**UNET).eval()
    ae = AutoencoderKL(DDCONFIG, embed_dim=EMBED_DIM).eval()
    with torch.no_grad():
        for m in (unet, ae):
            for _, p in m.named_parameters():
                if p.dim() > 1 and not p.abs().sum():
                    p.normal_(0.0, 0.02)
    return unet, ae


def schedule_buffers():
    betas = np.linspace(LS ** 0.5, LE ** 0.5, T, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"betas": f(betas), "alphas_cumprod": f(ac), "alphas_cumprod_prev": f(np.append(1.0, ac[:-1])),
            "sqrt_alphas_cumprod": f(np.sqrt(ac))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ema", action="store_true", help="also write model_ema.* (LitEma) for the UNet")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    unet, ae = build(a.seed)
    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + k] = v
    for k, v in ae.state_dict().items():
        sd["first_stage_model." + k] = v
    sd["scale_factor"] = torch.tensor(SCALE_FACTOR)
    sd.update(schedule_buffers())
    if a.ema:
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
        for k, v in unet.state_dict().items():
            sd["model_ema.diffusion_model" + k.replace(".", "")] = v.clone()
    n_unet = sum(p.numel() for p in unet.parameters())
    n_ae = sum(p.numel() for p in ae.parameters())
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.save({"state_dict": sd, "global_step": 0, "epoch": 0}, a.out)
    print(f"{a.out}: UNet {n_unet} parameters, first stage {n_ae}, {len(sd)} tensors, "
          f"{os.path.getsize(a.out)} bytes, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
