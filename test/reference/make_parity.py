"""Builds a reference model with random weights, runs it, and writes
weights.safetensors (upstream state-dict keys) and io.safetensors (x, t, y,
out) for test/models/parity.test.ts.

usage: make_parity.py openai|ddpm CONFIG_JSON OUTDIR SEED BATCH"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from ddpm_unet_ref import Model  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402


def main():
    kind, cfg, outdir, seed, batch = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    if kind == "openai":
        m = UNetModel(**cfg)
        res, cin = cfg["image_size"], cfg["in_channels"]
    else:
        m = Model(**cfg)
        res, cin = cfg["resolution"], cfg["in_channels"]
    m.eval()
    # Upstream zero-initialises some output convs; random values everywhere
    # make every path of the network count in the comparison.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / (fan_in ** 0.5))
            else:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    x = torch.randn(batch, cin, res, res)
    t = torch.randint(0, 1000, (batch,)).float()
    y = torch.randint(0, cfg.get("num_classes") or 1, (batch,))
    with torch.no_grad():
        out = m(x, t, y) if kind == "openai" and cfg.get("num_classes") else m(x, t)
    os.makedirs(outdir, exist_ok=True)
    st.save(os.path.join(outdir, "weights.safetensors"), {k: v.numpy() for k, v in m.state_dict().items()})
    st.save(os.path.join(outdir, "io.safetensors"), {"x": x.numpy(), "t": t.numpy(), "y": y.int().numpy().astype(np.int32), "out": out.numpy()})


if __name__ == "__main__":
    main()
