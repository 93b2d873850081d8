"""PyTorch side of bench/ops.ts: times the same ops on the same shapes.

Usage: python3 bench/torch_ops.py [THREADS]   (default: os.cpu_count())
Run by bench/ops.ts as a server on stdin/stdout, one JSON object per line, so
the two engines can be timed in alternation (under the same machine load):
  {"setup": CASE}            -> {"ok": true}      prepare inputs for CASE["name"]
  {"run": NAME, "n": N}      -> {"ms": [t1..tN]}  time N calls of that case
  {"info": true}             -> {"torch": version, "threads": n}
CASE: {"name", "kind", ...}: kind conv_forward | conv_backward_input |
conv_backward_weight (x, w, stride, padding, bias) or matmul (a, b).
Run with Debian's python3 (python3-torch 1.13).
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count())
torch.set_grad_enabled(False)


def conv_fn(c):
    x = torch.randn(*c["x"])
    w = torch.randn(*c["w"]) * 0.1
    b = torch.randn(c["w"][0]) if c.get("bias") else None
    s, p = [c["stride"]] * 2, [c["padding"]] * 2
    if c["kind"] == "conv_forward":
        return lambda: F.conv2d(x, w, b, stride=s, padding=p)
    gy = torch.randn_like(F.conv2d(x, w, b, stride=s, padding=p))
    bias_sizes = [c["w"][0]] if b is not None else None
    # One backward pass at a time, as the engine runs them.
    mask = [True, False, False] if c["kind"] == "conv_backward_input" else [False, True, b is not None]
    return lambda: torch.ops.aten.convolution_backward(gy, x, w, bias_sizes, s, p, [1, 1], False, [0, 0], 1, mask)


def matmul_fn(c):
    a, b = torch.randn(*c["a"]), torch.randn(*c["b"])
    return lambda: torch.matmul(a, b)


def main():
    fns = {}
    for line in sys.stdin:
        req = json.loads(line)
        if "setup" in req:
            c = req["setup"]
            fns[c["name"]] = matmul_fn(c) if c["kind"] == "matmul" else conv_fn(c)
            resp = {"ok": True}
        elif "run" in req:
            fn, times = fns[req["run"]], []
            for _ in range(req.get("n", 1)):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            resp = {"ms": times}
        else:
            resp = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        print(json.dumps(resp), flush=True)


if __name__ == "__main__":
    main()
