"""Exports one reference UNet (test/reference: same architecture and parameter
names as tdq-native's) to ONNX for onnxruntime and to safetensors for
tdq-native, with the same randomly initialised weights. Run by
bench/ort_compare.ts; by hand:

  /usr/bin/python3 bench/ort_export.py SPEC_JSON OUT_DIR

SPEC_JSON: {"model": "ddpm"|"openai", "unet": <unet_config.params>, "seed": N,
            "shape": [C, H, W]}
Writes OUT_DIR/model.onnx (inputs x (B, C, H, W) float32 and t (B,) int64,
output eps; batch dynamic) and OUT_DIR/model.safetensors (the state dict).
Needs only torch 1.13 (torch.onnx writes the protobuf itself) and numpy.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from ddpm_unet_ref import Model as DDPMModel  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402
import st  # noqa: E402

DDPM_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "in_channels", "resolution",
             "resamp_with_conv")


def main():
    spec = json.loads(sys.argv[1])
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(spec.get("seed", 0))
    if spec["model"] == "openai":
        model = UNetModel(**spec["unet"])
    else:
        model = DDPMModel(**{k: spec["unet"][k] for k in DDPM_KEYS if k in spec["unet"]})
    model.eval()
    # Default inits leave some layers zero (zero_module on output convs):
    # perturb every parameter so the comparison exercises all of them.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sd = {k: v.detach().contiguous().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    st.save(os.path.join(out, "model.safetensors"), sd)
    c, h, w = spec["shape"]
    x = torch.randn(2, c, h, w)
    t = torch.tensor([10, 500], dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(model, (x, t), os.path.join(out, "model.onnx"), input_names=["x", "t"],
                          output_names=["eps"], dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}},
                          opset_version=14, do_constant_folding=True)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
