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

Optional SPEC_JSON keys:
  "weights": a safetensors state dict (ours) to load instead of the random
             init (extra quantizer keys are ignored here); model.safetensors
             is then not written.
  "qdq": {"ckpt": QUANTIZED_SAFETENSORS, "out": FILE.onnx, "t": T | null,
          "zp": "int" | "exact", "out_qdq": false}
    exports the fake-quantized reference of a quantized UNet of ours (W8A8
    checkpoint: '<layer>.weight_quant.step' per output channel,
    '<layer>.act_quant.{step|step_table,signed,zero_point}') as QDQ in opset
    13: every quantized conv / linear gets QuantizeLinear -> DequantizeLinear
    on its input (per tensor, int8 when signed, uint8 otherwise) and on its
    weight (per output channel, int8 symmetric, levels -128..127 like ours).
    A TDQ checkpoint is exported at one timestep "t" (its step_table row: the
    static equivalent). Our unsigned quantizer after SiLU has a real-valued
    zero point z (levels of x - z); QDQ needs an integer one: "zp": "int"
    uses round(-z / step) (what ORT's own static quantizer would do; ORT can
    fuse it), "exact" keeps ours (Add(-z) -> Q -> DQ -> Add(z): equal to our
    fake quantization, not fusable). ORT fuses a conv into QLinearConv only
    with a QuantizeLinear on its output too: "out_qdq": true adds one after
    every quantized conv / linear (uint8 asymmetric, min / max of one forward
    of 8 random inputs), i.e. ORT's own static-quantization form. That is an
    extra 8-bit quantization our model does not have (its outputs stay float).
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


SILU_MIN = -0.2784645427610738


def install_fake_quant(model, qsd, t, zp_mode, bits=8, out_state=None):
    """Replaces the forward of every quantized conv / linear of the reference
    model by op(Q_a(x), Q_w(W), b) with torch's fake quantizers (which export
    as QuantizeLinear / DequantizeLinear)."""
    import torch.nn.functional as F
    names = sorted(k[: -len(".weight_quant.step")] for k in qsd if k.endswith(".weight_quant.step"))
    if not names:
        raise SystemExit("qdq: the checkpoint has no '<layer>.weight_quant.step' keys: not a quantized checkpoint")
    if any(k.endswith(".out_quant.step") or ".out_quant." in k for k in qsd):
        raise SystemExit("qdq: attention output quantizers (quantizeAttention) are not exported")
    mods = dict(model.named_modules())
    info = []
    for name in names:
        m = mods.get(name)
        if m is None:
            raise SystemExit(f"qdq: quantized layer '{name}' is not a module of the reference model")
        wstep = np.maximum(qsd[name + ".weight_quant.step"].astype(np.float32), np.float32(1e-8))
        if name + ".act_quant.step_table" in qsd:
            if t is None:
                raise SystemExit(f"qdq: '{name}' is a TDQ quantizer: give the timestep 't' to export")
            astep = float(qsd[name + ".act_quant.step_table"].reshape(-1)[t])
        elif name + ".act_quant.step" in qsd:
            astep = float(qsd[name + ".act_quant.step"].reshape(-1)[0])
        else:
            raise SystemExit(f"qdq: '{name}' has no act_quant.step or act_quant.step_table (TDQ: build the table first)")
        astep = max(float(np.float32(astep)), 1e-8)
        signed = bool(qsd[name + ".act_quant.signed"].reshape(-1)[0])
        zpf = float(qsd[name + ".act_quant.zero_point"].reshape(-1)[0])
        qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        zint = 0
        if zpf != 0 and zp_mode == "int":
            zint = int(min(max(round(-zpf / astep), qmin), qmax))
        ws = torch.from_numpy(wstep)
        wz = torch.zeros(len(wstep), dtype=torch.int32)

        def aq(x, astep=astep, zpf=zpf, zint=zint, qmin=qmin, qmax=qmax):
            if zpf != 0 and zp_mode == "exact":
                return torch.fake_quantize_per_tensor_affine(x - zpf, astep, 0, qmin, qmax) + zpf
            return torch.fake_quantize_per_tensor_affine(x, astep, zint, qmin, qmax)

        def wq(w, ws=ws, wz=wz):
            return torch.fake_quantize_per_channel_affine(w, ws, wz, 0, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)

        def oq(y, name=name):
            # out_state: None (outputs in float, as in our model), or ORT's static
            # form: {"record": True} collects each output's min / max, then
            # {"record": False} quantizes outputs uint8 asymmetric over that range
            if out_state is None:
                return y
            if out_state["record"]:
                lo, hi = out_state["ranges"].get(name, (0.0, 0.0))
                out_state["ranges"][name] = (min(lo, float(y.min())), max(hi, float(y.max())))
                return y
            lo, hi = out_state["ranges"][name]
            s = max((hi - lo) / 255.0, 1e-8)
            return torch.fake_quantize_per_tensor_affine(y, s, int(min(max(round(-lo / s), 0), 255)), 0, 255)

        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            m.forward = (lambda x, m=m, aq=aq, wq=wq, oq=oq: oq(m._conv_forward(aq(x), wq(m.weight), m.bias)))
        elif isinstance(m, torch.nn.Linear):
            m.forward = (lambda x, m=m, aq=aq, wq=wq, oq=oq: oq(F.linear(aq(x), wq(m.weight), m.bias)))
        else:
            raise SystemExit(f"qdq: '{name}' is a {type(m).__name__}, not a Conv1d / Conv2d / Linear")
        info.append({"layer": name, "signed": signed, "zero_point": zpf, "zint": zint, "step": astep})
    return info


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
    c, h, w = spec["shape"]
    x = torch.randn(2, c, h, w)
    t = torch.tensor([10, 500], dtype=torch.int64)
    axes = {"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}}
    params = sum(p.numel() for p in model.parameters())
    if spec.get("weights") or spec.get("qdq"):
        src = spec["qdq"]["ckpt"] if spec.get("qdq") else spec["weights"]
        qsd, _ = st.load(src)
        own = model.state_dict()
        missing = [k for k in own if k not in qsd]
        if missing:
            raise SystemExit(f"{src}: missing {len(missing)} keys of the reference model, e.g. {missing[:3]}")
        with torch.no_grad():
            for k, v in own.items():
                if tuple(qsd[k].shape) != tuple(v.shape):
                    raise SystemExit(f"{src}: '{k}' has shape {list(qsd[k].shape)}, the model wants {list(v.shape)}")
                v.copy_(torch.from_numpy(qsd[k].astype(np.float32)))
    else:
        sd = {k: v.detach().contiguous().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        st.save(os.path.join(out, "model.safetensors"), sd)
    if spec.get("qdq"):
        q = spec["qdq"]
        out_state = {"record": True, "ranges": {}} if q.get("out_qdq") else None
        info = install_fake_quant(model, qsd, q.get("t"), q.get("zp", "int"), out_state=out_state)
        with torch.no_grad():
            if out_state is not None:
                # output ranges from one forward of 8 random inputs at timesteps spread over [0, T)
                g = torch.Generator().manual_seed(7)
                T = int(spec.get("timesteps", 1000))
                model(torch.randn(8, c, h, w, generator=g), torch.tensor([(i * T) // 8 + 3 for i in range(8)], dtype=torch.int64))
                out_state["record"] = False
            torch.onnx.export(model, (x, t), q["out"], input_names=["x", "t"], output_names=["eps"],
                              dynamic_axes=axes, opset_version=13, do_constant_folding=True)
        print(json.dumps({"params": params, "torch": torch.__version__, "quantized_layers": len(info),
                          "unsigned": sum(1 for i in info if not i["signed"]),
                          "real_zero_point": sum(1 for i in info if i["zero_point"] != 0)}))
        return
    with torch.no_grad():
        torch.onnx.export(model, (x, t), os.path.join(out, "model.onnx"), input_names=["x", "t"],
                          output_names=["eps"], dynamic_axes=axes, opset_version=14, do_constant_folding=True)
    print(json.dumps({"params": params, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
