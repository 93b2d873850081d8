"""Fixtures of test/models/parity_xattn.test.ts (test/fixtures/xattn): a
SpatialTransformer alone and small UNetModels with use_spatial_transformer
whose context comes from a ClassEmbedder, built from the PyTorch
restatements (attention_ref.py, openaimodel_ref.py). Weights come from the
splitmix64 hash of autoencoder_ref.py (every parameter random, proj_out
too), so only inputs, outputs and gradients are stored; the test rebuilds
the weights from the manifest in the metadata.

usage: make_xattn.py OUTDIR"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from attention_ref import ClassEmbedder, SpatialTransformer  # noqa: E402
from autoencoder_ref import hashed_fill, np32  # noqa: E402
from openaimodel_ref import UNetModel  # noqa: E402


def save(outdir, name, io, meta):
    st.save(os.path.join(outdir, f"{name}.io.safetensors"),
            {k: (v.numpy() if v.dtype == torch.int32 else np32(v)) for k, v in io.items()},
            {k: json.dumps(v) for k, v in meta.items()})


def transformer_case(outdir):
    cfg = {"in_channels": 32, "n_heads": 2, "d_head": 8, "depth": 2, "context_dim": 12}
    seed = 21
    torch.manual_seed(seed)
    m = SpatialTransformer(cfg["in_channels"], cfg["n_heads"], cfg["d_head"], depth=cfg["depth"],
                           context_dim=cfg["context_dim"])
    manifest = hashed_fill(m, seed)
    x = torch.randn(2, 32, 4, 3, requires_grad=True)  # H != W: the pixel order counts
    context = torch.randn(2, 5, cfg["context_dim"], requires_grad=True)
    g = torch.randn(2, 32, 4, 3)
    out = m(x, context)
    (out * g).sum().backward()
    io = {"x": x, "context": context, "g": g, "out": out, "grad.x": x.grad, "grad.context": context.grad}
    for k, p in m.named_parameters():
        io["grad." + k] = p.grad
    # No context: attn2 attends to the features (its to_k/to_v then take inner_dim inputs).
    m2 = SpatialTransformer(cfg["in_channels"], cfg["n_heads"], cfg["d_head"], depth=1)
    manifest2 = hashed_fill(m2, seed + 1)
    with torch.no_grad():
        io["out_self"] = m2(x)
    save(outdir, "spatial_transformer", io, {"config": dict(cfg, seed=seed), "weights": manifest,
                                               "weights_self": manifest2})


# One context token: softmax over it is 1, so attn2.to_k and norm2 get zero gradients (checked as such).
UNET_GRAD_KEYS = ["input_blocks.1.1.proj_in.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                  "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
                  "middle_block.1.transformer_blocks.0.attn1.to_q.weight", "middle_block.1.norm.weight",
                  "output_blocks.2.1.transformer_blocks.0.ff.net.0.proj.weight",
                  "output_blocks.2.1.transformer_blocks.0.norm2.bias", "output_blocks.2.1.proj_out.weight",
                  "time_embed.0.bias", "out.2.weight"]


def unet_case(outdir, name, cfg, n_classes, seed, batch, grads):
    torch.manual_seed(seed)
    unet = UNetModel(**cfg)
    cond = ClassEmbedder(cfg["context_dim"], n_classes=n_classes)
    manifest = hashed_fill(unet, seed)
    cond_manifest = hashed_fill(cond, seed + 1000)
    res, cin = cfg["image_size"], cfg["in_channels"]
    x = torch.randn(batch, cin, res, res)
    t = torch.randint(0, 1000, (batch,)).float()
    labels = torch.randint(0, n_classes, (batch,))
    y = torch.randint(0, cfg.get("num_classes") or 1, (batch,))
    context = cond({"class": labels})
    out = unet(x, t, y if cfg.get("num_classes") else None, context)
    io = {"x": x, "t": t, "labels": labels.int(), "y": y.int(), "context": context, "out": out}
    if grads:
        g = torch.randn_like(out)
        (out * g).sum().backward()
        io["g"] = g
        params = dict(unet.named_parameters())
        for k in UNET_GRAD_KEYS:
            io["grad." + k] = params[k].grad
        io["grad.cond_stage_model.embedding.weight"] = cond.embedding.weight.grad
    save(outdir, name, io, {"config": cfg, "n_classes": n_classes, "seed": seed, "weights": manifest,
                            "cond_weights": cond_manifest})


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    transformer_case(outdir)
    base = {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
            "channel_mult": [1, 2], "use_spatial_transformer": True, "context_dim": 16}
    # num_heads: dim_head = ch // num_heads per level (8 then 16).
    unet_case(outdir, "unet_xattn", dict(base, attention_resolutions=[1, 2], num_heads=4), 10, 31, 2, True)
    # num_head_channels, depth 2, class labels through label_emb too, resblock_updown, scale-shift norm.
    unet_case(outdir, "unet_xattn_nhc", dict(base, attention_resolutions=[2], num_head_channels=16, transformer_depth=2,
                                             num_classes=3, resblock_updown=True, use_scale_shift_norm=True),
              7, 32, 2, False)


if __name__ == "__main__":
    main()
