"""PyTorch side of bench/ldm_churches.ts: the churches LDM's UNet (the
restatement of upstream's openaimodel.UNetModel in
test/reference/openaimodel_ref.py) and KL-f8 first stage
(test/reference/autoencoder_ref.py's AutoencoderKL, upstream's module names)
with the weights of a LatentDiffusion checkpoint (torch.load of the .ckpt,
model.diffusion_model.* and first_stage_model.*), DDIM steps at batch 1 and
the decode, timed in alternation with the engine.

Usage: python3 bench/ldm_churches_torch.py [THREADS] [--wait-policy P]   (bench/torch_server.py)
A server on stdin/stdout, one JSON object per line:
  {"load": CKPT, "unet": params, "ddconfig": params, "embed_dim"}
                         -> {"params_unet", "params_first_stage", "scale_factor", "seconds", "torch", "threads",
                             "omp_wait_policy", "peak_rss_bytes", "rss_bytes"}
  {"ddim": {"x": [...], "shape": [C, H, W], "steps": [[t, a, a_prev], ...]}}
                         -> {"step_ms": [...], "eps0": [...], "z": [...]}
     x_{prev} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps, x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)
     (DDIM, eta 0), in float64 on the host as the node side does; the model in float32
  {"decode": {"z": [...], "shape": [C, H, W]}} -> {"ms", "image": [...]}   decode_first_stage(z)
  {"reset_peak": true}, {"memory": true}: bench/torch_server.py
"""
import time

import numpy as np

import torch_server

ARGS = torch_server.start(__doc__)
torch = torch_server.load_torch(ARGS)
from autoencoder_ref import AutoencoderKL  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402


class Model:
    def __init__(self, req):
        t0 = time.perf_counter()
        self.unet = UNetModel(**req["unet"]).eval()
        self.ae = AutoencoderKL(req["ddconfig"], embed_dim=req["embed_dim"]).eval()
        ck = torch.load(req["load"], map_location="cpu")
        sd = ck["state_dict"] if "state_dict" in ck else ck
        pre_u, pre_f = "model.diffusion_model.", "first_stage_model."
        self.unet.load_state_dict({k[len(pre_u):]: v for k, v in sd.items() if k.startswith(pre_u)}, strict=True)
        self.ae.load_state_dict({k[len(pre_f):]: v for k, v in sd.items() if k.startswith(pre_f)}, strict=True)
        self.scale_factor = float(sd["scale_factor"]) if "scale_factor" in sd else 1.0
        del ck, sd
        self.seconds = time.perf_counter() - t0

    def ddim(self, req):
        shape = [1] + list(req["shape"])
        x = np.asarray(req["x"], dtype=np.float64).reshape(shape)
        times, eps0 = [], None
        with torch.no_grad():
            for t, a, ap in req["steps"]:
                t0 = time.perf_counter()
                eps = self.unet(torch.from_numpy(x.astype(np.float32)), torch.full((1,), float(t))).double().numpy()
                x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
                x = np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps
                times.append((time.perf_counter() - t0) * 1e3)
                if eps0 is None:
                    eps0 = eps
        return {"step_ms": times, "eps0": eps0.ravel().tolist(), "z": x.ravel().tolist()}

    def decode(self, req):
        z = torch.tensor(req["z"], dtype=torch.float32).reshape([1] + list(req["shape"]))
        t0 = time.perf_counter()
        with torch.no_grad():
            img = self.ae.decode(z / self.scale_factor)
        return {"ms": (time.perf_counter() - t0) * 1e3, "image": img.ravel().tolist()}


def main():
    m = None

    def load(req):
        nonlocal m
        m = Model(req)
        return {"params_unet": sum(p.numel() for p in m.unet.parameters()),
                "params_first_stage": sum(p.numel() for p in m.ae.parameters()),
                "scale_factor": m.scale_factor, "seconds": m.seconds, **torch_server.info(torch), **torch_server.memory()}

    torch_server.serve({"load": load, "ddim": lambda req: m.ddim(req["ddim"]), "decode": lambda req: m.decode(req["decode"])})


if __name__ == "__main__":
    main()
