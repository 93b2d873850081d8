"""PyTorch reference of CompVis latent-diffusion's LatentDiffusion
(ldm/models/diffusion/ddpm.py), restated minimally from reading upstream:
register_schedule ('linear'), get_first_stage_encoding (posterior sample *
scale_factor), on_train_batch_start's scale_by_std (1 / z.flatten().std()),
q_sample, p_losses (l1 / l2, eps / x0, the fixed logvar, l_simple_weight),
apply_model through DiffusionWrapper (conditioning_key None) and
decode_first_stage (z / scale_factor -> decode; VQModelInterface quantizes
first). The autoencoders and the UNet are the restatements in
autoencoder_ref.py and openaimodel_ref.py.

Regenerate the fixtures of test/models/latent.test.ts (Debian's python3 with
python3-torch 1.13):

    /usr/bin/python3 test/reference/latent_ref.py test/fixtures/latent

Each case writes CASE.io.safetensors: inputs and reference outputs, with
metadata "config" (JSON) and "weights", the LatentDiffusion state dict's
[key, shape] list under upstream's keys (model.diffusion_model.*,
first_stage_model.*) in upstream's order. The weights are not stored: they
come from autoencoder_ref.py's splitmix64 hash rule, which the test repeats.
The KL case's first stage is also saved with torch.save, Lightning style
({"state_dict": ..., "global_step": 3}, with a loss.logvar key), as
kl_first_stage.ckpt.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from autoencoder_ref import AutoencoderKL, VQModel, hashed_fill  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402


class VQModelInterface(VQModel):
    def encode(self, x):
        return self.encode_to_prequant(x)

    def decode(self, h, force_not_quantize=False):
        if not force_not_quantize:
            h, _, _ = self.quantize(h)
        return super().decode(h)


class DiffusionWrapper(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x, t):  # conditioning_key None
        return self.diffusion_model(x, t)


class LatentDiffusion(torch.nn.Module):
    def __init__(self, unet, first_stage, timesteps, linear_start, linear_end, scale_factor=1.0, scale_by_std=False):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.scale_by_std = scale_by_std
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        else:
            self.scale_factor = scale_factor
        self.first_stage_model = first_stage.eval()
        for p in self.first_stage_model.parameters():
            p.requires_grad = False
        # register_schedule, beta_schedule 'linear' (make_beta_schedule)
        betas = (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2).numpy()
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        to_torch = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.sqrt_alphas_cumprod = to_torch(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = to_torch(np.sqrt(1.0 - alphas_cumprod))
        self.num_timesteps = timesteps

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior, eps):
        z = posterior.sample(eps) if not isinstance(posterior, torch.Tensor) else posterior
        return self.scale_factor * z

    def set_scale_by_std(self, x, eps):
        z = self.get_first_stage_encoding(self.encode_first_stage(x), eps).detach()
        del self.scale_factor
        self.register_buffer("scale_factor", 1.0 / z.flatten().std())

    def q_sample(self, x_start, t, noise):
        a = self.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return a * x_start + s * noise

    def apply_model(self, x, t):
        return self.model(x, t)

    def p_losses(self, x_start, t, noise, loss_type, parameterization, l_simple_weight, logvar_init):
        x_noisy = self.q_sample(x_start, t, noise)
        out = self.apply_model(x_noisy, t)
        target = noise if parameterization == "eps" else x_start
        if loss_type == "l2":
            loss_simple = torch.nn.functional.mse_loss(target, out, reduction="none").mean([1, 2, 3])
        else:
            loss_simple = (target - out).abs().mean([1, 2, 3])
        logvar_t = torch.full((self.num_timesteps,), logvar_init)[t]
        loss = loss_simple / torch.exp(logvar_t) + logvar_t
        return l_simple_weight * loss.mean(), loss_simple, out

    def decode_first_stage(self, z):
        z = 1.0 / self.scale_factor * z
        return self.first_stage_model.decode(z)


def np32(t):
    return t.detach().cpu().numpy().astype(np.float32)


UNET = dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1,
            attention_resolutions=[2], channel_mult=[1, 2], num_heads=2)
DDCONFIG = dict(double_z=True, z_channels=3, resolution=16, in_channels=1, out_ch=1, ch=8, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0, norm_num_groups=4)
SCHED = dict(timesteps=1000, linear_start=0.0015, linear_end=0.0155)
LOSSES = [
    dict(name="l2_eps", loss_type="l2", parameterization="eps", l_simple_weight=1.0, logvar_init=0.0),
    dict(name="l1_x0", loss_type="l1", parameterization="x0", l_simple_weight=2.0, logvar_init=0.5),
]


def kl_case(outdir):
    torch.manual_seed(0)
    ae = AutoencoderKL(DDCONFIG, embed_dim=3)
    unet = UNetModel(**UNET)
    ldm = LatentDiffusion(unet, ae, scale_by_std=True, **SCHED).eval()
    manifest = hashed_fill(ldm, 1, skip=("scale_factor",))
    # The first stage alone as a Lightning-style PyTorch checkpoint (with the loss's tensors, skipped on loading).
    sd = {k: v.clone() for k, v in ae.state_dict().items()}
    sd["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": sd, "global_step": 3}, os.path.join(outdir, "kl_first_stage.ckpt"))
    g = torch.Generator().manual_seed(3)
    b = 2
    x = torch.rand(b, 1, 16, 16, generator=g) * 2 - 1
    eps_std = torch.randn(b, 3, 8, 8, generator=g)
    eps_enc = torch.randn(b, 3, 8, 8, generator=g)
    noise = torch.randn(b, 3, 8, 8, generator=g)
    zlat = torch.randn(b, 3, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    io = {"x": x, "eps_std": eps_std, "eps_enc": eps_enc, "noise": noise, "zlat": zlat, "t": t.float()}
    with torch.no_grad():
        ldm.set_scale_by_std(x, eps_std)
        io["scale_factor"] = ldm.scale_factor.reshape(1)
        z = ldm.get_first_stage_encoding(ldm.encode_first_stage(x), eps_enc)
        io["z"] = z
        for c in LOSSES:
            loss, loss_simple, out = ldm.p_losses(z, t, noise, c["loss_type"], c["parameterization"], c["l_simple_weight"], c["logvar_init"])
            io[f"loss_{c['name']}"] = loss.reshape(1)
            io[f"loss_simple_{c['name']}"] = loss_simple
            io["model_out"] = out
        io["eps_direct"] = ldm.apply_model(zlat, t)
        io["dec"] = ldm.decode_first_stage(zlat)
    meta = {"config": json.dumps({"unet": UNET, "ddconfig": DDCONFIG, "embed_dim": 3, "sched": SCHED, "losses": LOSSES, "seed": 1}), "weights": json.dumps(manifest)}
    st.save(os.path.join(outdir, "kl.io.safetensors"), {k: np32(v) for k, v in io.items()}, meta)


def vq_case(outdir):
    torch.manual_seed(0)
    dd = dict(DDCONFIG, double_z=False)
    ae = VQModelInterface(dd, n_embed=16, embed_dim=3)
    unet = UNetModel(**UNET)
    ldm = LatentDiffusion(unet, ae, scale_factor=0.7, **SCHED).eval()
    manifest = hashed_fill(ldm, 4, skip=("scale_factor",))
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    io = {"x": x}
    with torch.no_grad():
        z = ldm.get_first_stage_encoding(ldm.encode_first_stage(x), None)
        io["z"] = z
        io["zlat"] = z + 0.05 * torch.randn(z.shape, generator=g)
        io["dec"] = ldm.decode_first_stage(io["zlat"])
    meta = {"config": json.dumps({"unet": UNET, "ddconfig": dd, "embed_dim": 3, "n_embed": 16, "sched": SCHED, "scale_factor": 0.7, "seed": 4}), "weights": json.dumps(manifest)}
    st.save(os.path.join(outdir, "vq.io.safetensors"), {k: np32(v) for k, v in io.items()}, meta)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    kl_case(outdir)
    vq_case(outdir)


if __name__ == "__main__":
    main()
