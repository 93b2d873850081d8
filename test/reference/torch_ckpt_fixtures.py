#!/usr/bin/python3
"""Writes the small torch.save fixtures of test/io/torch_ckpt*.test.ts into
test/fixtures/torch/, plus expected.json (the values each tensor must load as,
in row-major order, as float64 lists or int lists).

Run with Debian's python3 (torch 1.13 CPU):
    /usr/bin/python3 test/reference/torch_ckpt_fixtures.py
The legacy-format files differ from run to run (their storage keys are
object ids); their contents and expected.json do not.
The hostile fixture is written by pickling an object whose __reduce__ names
os.system; nothing here ever unpickles it."""
import argparse
import collections
import json
import os
import sys

import numpy
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures', 'torch')
PWNED = '/tmp/tdq-pwned-torch-ckpt-fixture'
expected = {}


def values(t):
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return [float(x) for x in t.to(torch.float64).reshape(-1).tolist()]
    if t.dtype == torch.bool:
        return [int(x) for x in t.to(torch.int64).reshape(-1).tolist()]
    return [int(x) for x in t.reshape(-1).tolist()]


def record(name, sd, **extra):
    expected[name] = {
        'tensors': {k: {'dtype': str(v.dtype).replace('torch.', ''), 'shape': list(v.shape), 'values': values(v)}
                    for k, v in sd.items() if isinstance(v, torch.Tensor)},
        **extra,
    }


def save(name, obj, sd, legacy=False, protocol=2, **extra):
    path = os.path.join(OUT, name)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    record(name, sd, **extra)


class Hostile:
    def __reduce__(self):
        return (os.system, ('touch ' + PWNED,))


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)

    # fp32 state dict (an OrderedDict with _metadata, as nn.Module.state_dict() gives)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(r(*p.shape))
    sd = m.state_dict()
    save('fp32.pt', sd, sd)

    # fp16
    sd16 = collections.OrderedDict((k, v.half()) for k, v in sd.items())
    save('fp16.pt', sd16, sd16)

    # shared storage and views: a transposed view, a slice with an offset, the base itself
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8
    views = collections.OrderedDict([
        ('base', base),
        ('transposed', base.t()),
        ('slice', base[1:3, 2:5]),
        ('row', base[3]),
        ('strided', base[:, ::2]),
        ('scalar', base[2, 1]),
        ('expanded', torch.tensor([1.5, -2.0]).expand(3, 2)),
        ('empty', base[0:0]),
    ])
    save('views.pt', views, views)

    # dtypes
    dt = collections.OrderedDict([
        ('bf16', (r(5) * 3).to(torch.bfloat16)),
        ('i64', torch.tensor([[0, -1, 2 ** 31 - 1], [-2 ** 31, 7, 123456]], dtype=torch.int64)),
        ('bool', torch.tensor([True, False, True, True])),
        ('f64', torch.tensor([0.1, -2.5], dtype=torch.float64)),
        ('i32', torch.tensor([5, -6], dtype=torch.int32)),
        ('u8', torch.tensor([0, 200], dtype=torch.uint8)),
        ('i8', torch.tensor([-100, 100], dtype=torch.int8)),
    ])
    save('dtypes.pt', dt, dt)

    # legacy (pre-1.6) format, with a shared storage and a view
    leg = collections.OrderedDict([('w', r(3, 2)), ('h', r(4).half()), ('i', torch.tensor([3, -4]))])
    leg['wt'] = leg['w'].t()
    leg['tail'] = leg['w'].reshape(-1)[2:]
    save('legacy.pt', leg, leg, legacy=True)
    leg_views = collections.OrderedDict(views)
    save('legacy_views.pt', leg_views, leg_views, legacy=True)

    # a Lightning-shaped LDM checkpoint
    unet = collections.OrderedDict([
        ('model.diffusion_model.input_blocks.0.0.weight', r(2, 1, 3, 3)),
        ('model.diffusion_model.input_blocks.0.0.bias', r(2)),
        ('model.diffusion_model.out.2.weight', r(1, 2, 3, 3)),
    ])
    ldm = collections.OrderedDict()
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 10, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    ldm['betas'] = betas.float()
    ldm['alphas_cumprod'] = alphas_cumprod.float()
    ldm['alphas_cumprod_prev'] = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float()
    ldm.update(unet)
    ldm['first_stage_model.encoder.conv_in.weight'] = r(2, 3, 3, 3)
    ldm['cond_stage_model.embedding.weight'] = r(4, 2)
    ldm['model_ema.decay'] = torch.tensor(0.9999)
    ldm['model_ema.num_updates'] = torch.tensor(1234, dtype=torch.int32)
    for k, v in unet.items():
        ldm['model_ema.' + k[len('model.'):].replace('.', '')] = v + 100
    ldm['model.diffusion_model.loss_ignored.weight'] = r(2)
    hp = argparse.Namespace(lr=1e-4, batch_size=4, name='ldm-test')
    opt_state = {'state': {0: {'step': torch.tensor(3.0), 'exp_avg': r(2)}}, 'param_groups': [{'lr': 1e-4, 'betas': (0.9, 0.999), 'params': [0]}]}
    lightning = {
        'epoch': 7,
        'global_step': 1234,
        'pytorch-lightning_version': '1.4.2',
        'state_dict': ldm,
        'optimizer_states': [opt_state],
        'lr_schedulers': [],
        'callbacks': {'ModelCheckpoint': {'best_model_score': torch.tensor(0.25), 'monitor': 'val/loss', 'kth_value': numpy.float64(0.5)}},
        'hyper_parameters': hp,
    }
    save('lightning.ckpt', lightning, ldm, epoch=7, global_step=1234,
         ema_of={k: 'model_ema.' + k[len('model.'):].replace('.', '') for k in unet})

    # hostile: a value whose unpickling would call os.system, next to a real tensor
    hostile = {'weight': torch.tensor([1.0, 2.0, 3.0]), 'evil': Hostile()}
    save('hostile.pt', hostile, hostile, pwned=PWNED)
    save('hostile_legacy.pt', hostile, hostile, legacy=True, pwned=PWNED)

    # a whole module (torch.save(model)): the nn.Module tree pickled with its __dict__;
    # a non-persistent buffer is left out of its state_dict()
    whole = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in whole.parameters():
            p.copy_(r(*p.shape))
    whole[1].register_buffer('scratch', torch.ones(2), persistent=False)
    save('whole_module.pt', whole, whole.state_dict(), state_dict_keys=list(whole.state_dict().keys()))

    # pickle protocols 4 and 5 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, ...)
    p4 = collections.OrderedDict([('a', r(2, 3)), ('b', r(3).half())])
    p4['at'] = p4['a'].t()
    save('proto4.pt', p4, p4, protocol=4)
    save('proto4_legacy.pt', p4, p4, legacy=True, protocol=4)

    # plain values through the unpickler, protocols 2 to 5 (the JSON form the test compares with)
    import pickle
    plain = {'none': None, 't': True, 'f': False, 'small': 7, 'neg': -300, 'i32': -2 ** 31, 'big': 2 ** 62 + 1, 'huge': -(2 ** 100),
             'float': -1.25e-7, 'str': 'h\u00e9llo \u2603', 'bytes': b'\x00\xff\x80ab', 'bytearray': bytearray(b'xyz'),
             'tuple': (1, (2, 3), ()), 'list': [1, [2, [3, []]]], 'set': {3}, 'frozenset': frozenset({4}),
             'nested': {'k': [{'deep': (None,)}]}, 'od': collections.OrderedDict([('x', 1), ('y', 2)]), 7: 'int key'}
    for proto in (2, 3, 4, 5):
        with open(os.path.join(OUT, f'plain_p{proto}.pkl'), 'wb') as f:
            pickle.dump(plain, f, protocol=proto)

    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write('\n')
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f'wrote {len(expected)} fixtures to {OUT}: {total} bytes in all (torch {torch.__version__})', file=sys.stderr)


if __name__ == '__main__':
    main()
