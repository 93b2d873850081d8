"""Oracle ops for the optimizers: several torch.optim steps, gradient clipping."""
import torch
from oracle import op


@op("adam_steps")
def adam_steps(i, a):
    """Runs len(grads) steps of torch.optim.Adam/AdamW on a flat parameter.

    inputs: param (n,), grads (steps, n)
    attrs: lr (or lrs, one per step), betas, eps, weight_decay, decoupled
    outputs: param, exp_avg, exp_avg_sq after the last step
    """
    p = torch.nn.Parameter(i["param"].clone())
    grads = i["grads"]
    cls = torch.optim.AdamW if a.get("decoupled") else torch.optim.Adam
    opt = cls([p], lr=a["lr"], betas=tuple(a["betas"]), eps=a["eps"], weight_decay=a["weight_decay"])
    lrs = a.get("lrs")
    for k in range(grads.shape[0]):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[k]
        p.grad = grads[k].clone()
        opt.step()
    st = opt.state[p]
    return p.detach(), st["exp_avg"], st["exp_avg_sq"]


@op("clip_grad_norm")
def clip_grad_norm(i, a):
    """torch.nn.utils.clip_grad_norm_ over gradients g0..gk (keys sorted by index).

    outputs: total norm, then the clipped gradients in order
    """
    keys = sorted(i, key=lambda k: int(k[1:]))
    params = []
    for k in keys:
        p = torch.nn.Parameter(torch.zeros_like(i[k]))
        p.grad = i[k].clone()
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, a["max_norm"])
    return (norm.reshape(1), *[p.grad for p in params])
