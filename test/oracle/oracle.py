"""PyTorch oracle for the test suite.

Reads JSON requests from stdin, one per line, and answers one JSON line each:
  {"op": name, "inputs": {k: {"shape", "dtype", "b64"}}, "attrs": {...},
   "wrt": [names], "grad_outputs": [{"shape", "b64"}] | null}
  -> {"outputs": [{"shape", "b64"}], "grads": {name: {"shape", "b64"}}}
Tensors travel as base64 little-endian float32 (int32/int8/uint8 when marked).
Ops are the functions registered with @op in the ops_*.py files beside this one;
they compute in float64 unless the request says otherwise, so comparisons
measure the engine's error only. Run with Debian's python3 (python3-torch).
"""
import base64
import glob
import importlib.util
import json
import os
import sys
import traceback

import numpy as np
import torch

torch.set_num_threads(1)
OPS = {}
DTYPES = {"float32": np.float32, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "float64": np.float64}


def op(name):
    def register(fn):
        OPS[name] = fn
        return fn
    return register


def decode(t, compute_dtype):
    dt = t.get("dtype", "float32")
    arr = np.frombuffer(base64.b64decode(t["b64"]), dtype=DTYPES[dt]).reshape(t["shape"]).copy()
    x = torch.from_numpy(arr)
    return x.to(compute_dtype) if dt == "float32" else x


def encode(x):
    x = x.detach()
    if x.dtype in (torch.float64, torch.float32, torch.float16):
        arr, dt = x.to(torch.float32).contiguous().numpy(), "float32"
    elif x.dtype == torch.int8:
        arr, dt = x.contiguous().numpy(), "int8"
    elif x.dtype == torch.uint8:
        arr, dt = x.contiguous().numpy(), "uint8"
    else:
        arr, dt = x.to(torch.int32).contiguous().numpy(), "int32"
    return {"shape": list(x.shape), "dtype": dt, "b64": base64.b64encode(arr.tobytes()).decode()}


def handle(req):
    compute = torch.float32 if req.get("attrs", {}).get("_float32") else torch.float64
    wrt = set(req.get("wrt", []))
    inputs = {}
    for k, v in req["inputs"].items():
        if v is None:
            inputs[k] = None
            continue
        x = decode(v, compute)
        if k in wrt:
            x.requires_grad_(True)
        inputs[k] = x
    attrs = {k: v for k, v in req.get("attrs", {}).items() if not k.startswith("_")}
    outs = OPS[req["op"]](inputs, attrs)
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    grads = {}
    gos = req.get("grad_outputs")
    if gos:
        pairs = [(o, decode(g, compute).to(o.dtype)) for o, g in zip(outs, gos) if g is not None and o.requires_grad]
        torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
        for k in wrt:
            g = inputs[k].grad
            grads[k] = encode(g if g is not None else torch.zeros_like(inputs[k]))
    return {"outputs": [encode(o) for o in outs], "grads": grads}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.modules["oracle"] = sys.modules[__name__]
    for path in sorted(glob.glob(os.path.join(here, "ops_*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    print(json.dumps({"ready": True, "torch": torch.__version__, "ops": sorted(OPS)}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            resp = handle(json.loads(line))
        except Exception as e:  # report, keep serving
            resp = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        print(json.dumps(resp), flush=True)


if __name__ == "__main__":
    main()
