#!/usr/bin/env python3
"""Convert the FID Inception weights (pytorch-fid's pt_inception-2015-12-05-*.pth,
a PyTorch state dict of the 2015-12-05 TensorFlow InceptionV3 in torchvision's
Inception3 layout) to a safetensors file that `tdq-native eval
--inception-weights FILE` loads by key.

    python3 scripts/convert-inception.py pt_inception-2015-12-05-6726825d.pth inception-2015-12-05.safetensors

Needs only torch (for torch.load) and numpy; the safetensors file is written
directly. BatchNorm's num_batches_tracked counters are dropped (evaluation does
not use them); every other tensor is stored as float32 under its own name.
The tensors are checked against the shapes the FID network expects, so a
different Inception checkpoint (torchvision's ImageNet one has 1000 classes and
other blocks) is refused instead of giving silently wrong features.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

EXPECTED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def load_state_dict(path):
    import torch

    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not hasattr(v, "numpy"):
            sys.exit(f"{path}: entry {k!r} is not a tensor")
        out[k] = v.detach().to("cpu").float().numpy()
    return out


def check(sd):
    problems = []
    for k, shape in EXPECTED.items():
        if k not in sd:
            problems.append(f"missing {k}")
        elif tuple(sd[k].shape) != shape:
            problems.append(f"{k} has shape {tuple(sd[k].shape)}, expected {shape}")
    if any(k.startswith("AuxLogits.") for k in sd):
        problems.append("has AuxLogits.* (not the FID network, which is built without the auxiliary head)")
    units = {k.rsplit(".", 2)[0] for k in sd if k.endswith(".conv.weight")}
    if len(units) != 94:
        problems.append(f"{len(units)} conv units, expected 94")
    if problems:
        sys.exit("not the FID Inception (pt_inception-2015-12-05) state dict:\n  " + "\n  ".join(problems))


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for k in sorted(tensors):
        nbytes = tensors[k].size * 4
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for k in sorted(tensors):
            fh.write(np.ascontiguousarray(tensors[k], dtype="<f4").tobytes())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="pt_inception-2015-12-05-*.pth")
    ap.add_argument("dst", help="output .safetensors")
    args = ap.parse_args()
    sd = load_state_dict(args.src)
    check(sd)
    write_safetensors(args.dst, sd, {"format": "fid-inception-2015-12-05", "source": os.path.basename(args.src)})
    print(f"wrote {len(sd)} tensors ({sum(v.size for v in sd.values())} parameters) to {args.dst}")


if __name__ == "__main__":
    main()
