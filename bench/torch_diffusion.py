"""PyTorch side of bench/diffusion.ts: DDIM sampling and training steps of the
reference UNets (test/reference/*.py, same architecture and parameter names
as ours) on the same shapes, timed in alternation with the engine.

Usage: python3 bench/torch_diffusion.py [THREADS] [--wait-policy P]   (bench/torch_server.py)
Run by bench/diffusion.ts as a server on stdin/stdout, one JSON object per
line. One process serves one case, so its peak RSS belongs to that case.
  {"info": true}        -> {"torch", "threads", "omp_wait_policy", "rss_bytes"}
  {"setup": CASE}       -> {"params", "rss_bytes"}   build the model (random init)
  {"run": N, "steps": S} -> {"ms": [...], "cpu_ms": [...]}  N timed runs (wall and
                            process CPU time, user + system); a run is one
                            whole DDIM sampling (S model calls, default all) or
                            one training step
  {"reset_peak": true}  -> {"ok"}                    peak RSS := current RSS
  {"memory": true}      -> {"peak_rss_bytes", "rss_bytes"}
  {"profile": S, "top": K} -> {"ops": [[name, calls, seconds]...], "seconds"}
                            one run (S sampler steps, or S training steps)
                            under torch.autograd.profiler, self CPU time per op
CASE: {"model": "openai"|"ddpm", "unet": params, "mode": "sample"|"train",
  "batch", "shape": [C, H, W], "seed",
  sample: "ddim": [[t, cx, ce], ...] (noisiest first: x <- cx x + ce eps(x, t)),
  train: "sqrt_ac", "sqrt_1m_ac" (per timestep), "lr", "betas", "eps",
  "grad_clip" (0: none), "loss": "l2"|"l1"},
  optional "device": "cpu" (default) | "cuda", "dtype": "float32" (default) | "float16"
  (bench/cuda_vs_torch.ts): float16 is PyTorch's mixed precision, the model
  under torch.autocast(float16) (float32 weights; training adds GradScaler). On cuda each run ends with
  torch.cuda.synchronize(), and "memory" adds the device's peak allocation.
"reset_peak" and "memory" (peak resident set, VmHWM) come from bench/torch_server.py.
"""
import contextlib
import time

import torch_server

ARGS = torch_server.start(__doc__)
torch = torch_server.load_torch(ARGS)
import torch.nn.functional as F  # noqa: E402

from ddpm_unet_ref import Model as DDPMModel  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402

DDPM_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "in_channels", "resolution",
             "resamp_with_conv")


class Case:
    def __init__(self, c):
        self.c = c
        self.device = torch.device(c.get("device", "cpu"))
        self.half = c.get("dtype", "float32") == "float16"
        if self.half and self.device.type != "cuda":
            raise ValueError("dtype float16 is benchmarked on cuda only")
        torch.manual_seed(c.get("seed", 0))
        if c["model"] == "openai":
            self.model = UNetModel(**c["unet"])
        else:
            self.model = DDPMModel(**{k: c["unet"][k] for k in DDPM_KEYS if k in c["unet"]})
        self.model.to(self.device)
        self.batch = c["batch"]
        self.shape = [self.batch] + list(c["shape"])
        self.gen = torch.Generator().manual_seed(c.get("seed", 0) + 1)
        if c["mode"] == "sample":
            self.model.eval()
            self.ddim = c["ddim"]
        else:
            self.model.train()
            self.sqrt_ac = torch.tensor(c["sqrt_ac"], dtype=torch.float32, device=self.device)
            self.sqrt_1m_ac = torch.tensor(c["sqrt_1m_ac"], dtype=torch.float32, device=self.device)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=c["lr"], betas=tuple(c["betas"]), eps=c["eps"])
            self.scaler = torch.cuda.amp.GradScaler() if self.half else None
            self.x0 = (torch.rand(self.shape, generator=self.gen) * 2 - 1).to(self.device)

    def autocast(self):
        # (torch 1.13 refuses float16 autocast on the CPU even when disabled)
        return torch.autocast(device_type="cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()

    def sample(self, steps=None):
        plan = self.ddim if steps is None else self.ddim[:steps]
        with torch.no_grad(), self.autocast():
            x = torch.randn(self.shape, generator=self.gen).to(self.device)
            for t, cx, ce in plan:
                eps = self.model(x, torch.full((self.batch,), float(t), device=self.device))
                x = cx * x + ce * eps.float()
        return x

    def train_step(self):
        c = self.c
        t = torch.randint(0, len(self.sqrt_ac), (self.batch,), generator=self.gen).to(self.device)
        noise = torch.randn(self.shape, generator=self.gen).to(self.device)
        xt = self.sqrt_ac[t].view(-1, 1, 1, 1) * self.x0 + self.sqrt_1m_ac[t].view(-1, 1, 1, 1) * noise
        with self.autocast():
            eps = self.model(xt, t.float())
            loss = F.mse_loss(eps.float(), noise) if c["loss"] == "l2" else F.l1_loss(eps.float(), noise)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if c["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c["grad_clip"])
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def run_once(self, steps=None):
        if self.c["mode"] == "sample":
            self.sample(steps)
        else:
            for _ in range(steps or 1):
                self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def main():
    case = None

    def setup(req):
        nonlocal case
        case = Case(req["setup"])
        return {"params": sum(p.numel() for p in case.model.parameters()), "rss_bytes": torch_server.rss_bytes()}

    def run(req):
        times, cpu = [], []
        for _ in range(req["run"]):
            _, ms, cpu_ms = torch_server.timed(case.run_once, req.get("steps"))
            times.append(ms)
            cpu.append(cpu_ms)
        return {"ms": times, "cpu_ms": cpu}

    def profile(req):
        t0 = time.perf_counter()
        with torch.autograd.profiler.profile() as prof:
            case.run_once(req["profile"])
        wall = time.perf_counter() - t0
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        return {
            "seconds": wall,
            "ops": [[e.key, e.count, e.self_cpu_time_total / 1e6] for e in ops[: req.get("top", 12)]],
            "total_self_seconds": sum(e.self_cpu_time_total for e in ops) / 1e6,
        }

    def info(req):
        r = torch_server.info(torch)
        r["cuda"] = torch.cuda.is_available()
        if r["cuda"]:
            r["gpu"] = torch.cuda.get_device_name(0)
            r["cuda_version"] = torch.version.cuda
            r["cudnn"] = torch.backends.cudnn.version()
        return r

    def device_memory(req):
        if not torch.cuda.is_available():
            return {"peak_allocated_bytes": None}
        r = {"peak_allocated_bytes": torch.cuda.max_memory_allocated()}
        if req.get("reset"):
            torch.cuda.reset_peak_memory_stats()
        return r

    torch_server.serve({"info": info, "setup": setup, "run": run, "profile": profile, "device_memory": device_memory})


if __name__ == "__main__":
    main()
