"""Whole tiny latent-diffusion checkpoints, written by torch.save in the
shape of a Lightning checkpoint of upstream's LatentDiffusion (CompVis
latent-diffusion ldm/models/diffusion/ddpm.py), for the loader and the
`sample` command (test/models/load_latent.test.ts, test/cli/sample_latent.test.ts):

  state_dict: model.diffusion_model.*  (the UNet, openaimodel_ref.py)
              first_stage_model.*      (AutoencoderKL, autoencoder_ref.py)
              cond_stage_model.*       (ClassEmbedder: embedding.weight), conditional case only
              scale_factor             (the scale_by_std buffer)
              model_ema.decay, model_ema.num_updates, model_ema.<name without dots>
                                       (LitEma of self.model: here raw + 0.01, so a test sees which were loaded)
              betas, alphas_cumprod, ... (register_schedule's buffers)
  plus global_step / epoch (non-tensor entries).

Regenerate (Debian's python3 with python3-torch 1.13):

    /usr/bin/python3 test/reference/ldm_ckpt_ref.py test/fixtures/latent

Writes tiny_ldm_cond.ckpt (class-conditional, crossattn, ClassEmbedder with
4 classes: 0..2 and 3 = "no class") and tiny_ldm_uncond.ckpt (unconditional).
Their configs are test/fixtures/latent/tiny_ldm_{cond,uncond}.yaml.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_ref import AutoencoderKL  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402

DDCONFIG = dict(double_z=True, z_channels=3, resolution=16, in_channels=1, out_ch=1, ch=8, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0, norm_num_groups=4)
UNET = dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1,
            attention_resolutions=[1], channel_mult=[1], num_heads=2)
T, LS, LE = 1000, 0.0015, 0.0155


def schedule_buffers():
    betas = np.linspace(LS ** 0.5, LE ** 0.5, T, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    acp = np.append(1.0, ac[:-1])
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"betas": f(betas), "alphas_cumprod": f(ac), "alphas_cumprod_prev": f(acp), "sqrt_alphas_cumprod": f(np.sqrt(ac))}


def write(outdir, name, cond):
    torch.manual_seed(11 if cond else 12)
    unet_kw = dict(UNET, use_spatial_transformer=True, context_dim=8, num_heads=2) if cond else UNET
    unet = UNetModel(**unet_kw)
    ae = AutoencoderKL(DDCONFIG, embed_dim=3)
    sd = {}
    with torch.no_grad():
        for k, v in unet.state_dict().items():
            # upstream zero-initialises some output convs; random everywhere so every path counts
            sd["model.diffusion_model." + k] = torch.randn(v.shape) * 0.1 if v.dim() > 1 else v.clone() + 0.01 * torch.randn(v.shape)
        for k, v in ae.state_dict().items():
            sd["first_stage_model." + k] = v.clone()
        if cond:
            sd["cond_stage_model.embedding.weight"] = torch.randn(4, 8)
        sd["scale_factor"] = torch.tensor(0.8)
        for k, v in list(sd.items()):
            if k.startswith("model.diffusion_model."):
                sd["model_ema." + k[len("model."):].replace(".", "")] = v + 0.01
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
        sd.update(schedule_buffers())
    torch.save({"state_dict": sd, "global_step": 7, "epoch": 1}, os.path.join(outdir, name + ".ckpt"))


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/latent"
    write(outdir, "tiny_ldm_cond", True)
    write(outdir, "tiny_ldm_uncond", False)


if __name__ == "__main__":
    main()
