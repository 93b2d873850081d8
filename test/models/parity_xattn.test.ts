// Parity of the cross-attention pieces (SpatialTransformer, UNetModel with
// use_spatial_transformer, ClassEmbedder as its context) with PyTorch
// restatements of the upstream modules (test/reference/attention_ref.py,
// openaimodel_ref.py), from committed fixtures (test/fixtures/xattn, made by
// test/reference/make_xattn.py): no PyTorch at run time. Weights are rebuilt
// from the fixture's manifest by the splitmix64 rule of the autoencoder
// fixtures. Forward to 1e-4 relative, gradients (of sum(out * g)) to 2e-4.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import { readSafetensors } from '../../src/io/safetensors';
import { ClassEmbedder } from '../../src/models/conditioning';
import { AttentionBlock, UNetModel, type UNetConfig } from '../../src/models/openai_unet';
import { SpatialTransformer } from '../../src/models/transformer';
import { backward, noGrad } from '../../src/tensor/autograd';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { relError } from '../helpers/assert';
import { hashedWeights } from './autoencoder_fixture';

const DIR = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'xattn');
const RTOL = 1e-4;
const GRAD_RTOL = 2e-4;

type Manifest = [string, number[]][];

async function load(name: string) {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, `${name}.io.safetensors`));
  const meta = Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, JSON.parse(v)]));
  return { io: (k: string) => { const t = tensors.get(k); assert.ok(t, `fixture ${name}: no tensor '${k}'`); return t; }, meta };
}

async function close(what: string, actual: Tensor | null | undefined, expected: Tensor, rtol = RTOL): Promise<void> {
  assert.ok(actual, `${what}: missing`);
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const e = relError((await actual.data()) as Float32Array, (await expected.data()) as Float32Array);
  console.log(`# ${what}: relative error ${e.toExponential(2)}`);
  assert.ok(e <= rtol, `${what}: relative error ${e.toExponential(3)} > ${rtol}`);
}

function keysOf(manifest: Manifest): string[] {
  return manifest.map(([k]) => k);
}

describe('SpatialTransformer parity with ldm.modules.attention', () => {
  it('forward and gradients (depth 2, context_dim 12, inner dim 16 != 32 channels, H != W)', async () => {
    const { io, meta } = await load('spatial_transformer');
    const c = meta.config as { in_channels: number; n_heads: number; d_head: number; depth: number; context_dim: number; seed: number };
    const m = new SpatialTransformer(c.in_channels, c.n_heads, c.d_head, { depth: c.depth, contextDim: c.context_dim });
    assert.deepEqual([...m.stateDict().keys()], keysOf(meta.weights), 'state-dict keys in upstream order');
    m.loadStateDict(hashedWeights(meta.weights, c.seed), { strict: true });
    const x = io('x'), context = io('context');
    x.requiresGrad = true;
    context.requiresGrad = true;
    const out = m.forward(x, context);
    await close('out', out, io('out'));
    backward(out, io('g'));
    await close('grad x', x.grad, io('grad.x'), GRAD_RTOL);
    await close('grad context', context.grad, io('grad.context'), GRAD_RTOL);
    for (const [k, p] of m.namedParameters()) await close(`grad ${k}`, p.grad, io(`grad.${k}`), GRAD_RTOL);
    m.dispose();
  });

  it('without a context attn2 attends to the features', async () => {
    const { io, meta } = await load('spatial_transformer');
    const c = meta.config as { in_channels: number; n_heads: number; d_head: number; seed: number };
    const m = new SpatialTransformer(c.in_channels, c.n_heads, c.d_head);
    assert.deepEqual([...m.stateDict().keys()], keysOf(meta.weights_self));
    m.loadStateDict(hashedWeights(meta.weights_self, c.seed + 1), { strict: true });
    await close('out (self)', noGrad(() => m.forward(io('x'))), io('out_self'));
    m.dispose();
  });

  it('proj_out starts at zero (zero_module): a fresh transformer is the identity', async () => {
    const m = new SpatialTransformer(32, 4, 8, { contextDim: 6 });
    for (const [k, p] of m.namedParameters()) if (k.startsWith('proj_out.')) assert.ok(((await p.data()) as Float32Array).every((v) => v === 0), k);
    const x = fromArray(Float32Array.from({ length: 2 * 32 * 9 }, (_, i) => Math.sin(i)), [2, 32, 3, 3]);
    const ctx = fromArray(Float32Array.from({ length: 2 * 2 * 6 }, (_, i) => Math.cos(i)), [2, 2, 6]);
    assert.deepEqual(await noGrad(() => m.forward(x, ctx)).data(), await x.data());
    m.dispose();
  });

  it('names the bad shape of a context or input', async () => {
    const m = new SpatialTransformer(32, 2, 8, { contextDim: 12 });
    const x = fromArray(new Float32Array(2 * 32 * 4), [2, 32, 2, 2]);
    assert.throws(() => m.forward(x, fromArray(new Float32Array(2 * 3 * 10), [2, 3, 10])), /context must have shape \[2, M, 12\], got \[2, 3, 10\]/);
    assert.throws(() => m.forward(fromArray(new Float32Array(16 * 4), [1, 16, 2, 2])), /x must have shape \[B, 32, H, W\], got \[1, 16, 2, 2\]/);
    assert.throws(() => new SpatialTransformer(32, 0, 8), /n_heads and d_head must be positive integers/);
    assert.throws(() => m.forward(x), /no context given, so it would attend to its input of width 16, but to_k\/to_v take context_dim=12/);
    m.dispose();
  });
});

async function unetCase(name: string, withGrads: boolean): Promise<void> {
  const { io, meta } = await load(name);
  const cfg = meta.config as UNetConfig;
  const unet = new UNetModel(cfg);
  const cond = new ClassEmbedder({ embed_dim: cfg.context_dim!, n_classes: meta.n_classes });
  assert.deepEqual([...unet.stateDict().keys()], keysOf(meta.weights), 'UNet state-dict keys in upstream order');
  assert.deepEqual([...cond.stateDict().keys()], keysOf(meta.cond_weights), 'ClassEmbedder keys');
  unet.loadStateDict(hashedWeights(meta.weights, meta.seed), { strict: true });
  cond.loadStateDict(hashedWeights(meta.cond_weights, meta.seed + 1000), { strict: true });
  unet.eval();
  const context = cond.encode({ class: io('labels') });
  await close(`${name} ClassEmbedder context`, context, io('context'));
  const out = unet.forward(io('x'), io('t'), cfg.num_classes ? io('y') : undefined, context);
  await close(`${name} out`, out, io('out'));
  if (withGrads) {
    backward(out, io('g'));
    const params = new Map(unet.namedParameters());
    for (const [k] of meta.weights as Manifest) {
      if (!k.includes('.') || !params.has(k)) continue;
      const key = `grad.${k}`;
      try {
        io(key);
      } catch {
        continue;
      }
      const expected = (await io(key).data()) as Float32Array;
      if (expected.every((v) => v === 0)) {
        // Exactly zero in PyTorch (one context token: attn2's softmax is 1): ours must be zero up to rounding.
        const g = params.get(k)!.grad;
        const ours = g ? ((await g.data()) as Float32Array) : new Float32Array(0);
        const worst = ours.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
        console.log(`# ${name} ${key}: zero in PyTorch, max |ours| ${worst.toExponential(2)}`);
        assert.ok(worst <= 1e-6, `${name} ${key}: PyTorch's gradient is 0, ours has max |g| ${worst}`);
        continue;
      }
      await close(`${name} ${key}`, params.get(k)!.grad, io(key), GRAD_RTOL);
    }
    await close(`${name} grad cond_stage_model.embedding.weight`, cond.embedding.weight.grad, io('grad.cond_stage_model.embedding.weight'), GRAD_RTOL);
  }
  unet.dispose();
  cond.dispose();
}

describe('UNetModel with use_spatial_transformer, context from a ClassEmbedder', () => {
  it('num_heads 4 (dim_head 8, then 16), attention at ds 1 and 2: output and gradients', () => unetCase('unet_xattn', true));
  it('num_head_channels 16, depth 2, num_classes with label_emb, resblock_updown, scale-shift norm', () => unetCase('unet_xattn_nhc', false));

  it('upstream head rule: per-level dim_head for SpatialTransformers; legacy and num_heads_upsample for AttentionBlocks', () => {
    const base = { image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [1, 2], use_spatial_transformer: true, context_dim: 8 };
    const heads = (m: UNetModel) => m.namedModules().filter(([, x]) => x instanceof SpatialTransformer).map(([n, x]) => {
      const st = x as SpatialTransformer;
      return `${n}:${st.blocks[0].attn1.heads}x${st.blocks[0].attn1.dimHead}`;
    });
    const a = new UNetModel({ ...base, num_heads: 4 });
    assert.deepEqual(heads(a), ['input_blocks.1.1:4x8', 'input_blocks.3.1:4x16', 'middle_block.1:4x16', 'output_blocks.0.1:4x16', 'output_blocks.1.1:4x16', 'output_blocks.2.1:4x8', 'output_blocks.3.1:4x8']);
    const b = new UNetModel({ ...base, num_head_channels: 16 });
    assert.deepEqual(heads(b).slice(0, 2), ['input_blocks.1.1:2x16', 'input_blocks.3.1:4x16']);
    // AttentionBlocks: legacy passes num_head_channels (-1), so the decoder uses num_heads_upsample;
    // legacy false passes dim_head = ch // num_heads, so the decoder ends up with num_heads heads.
    const plain = { ...base, use_spatial_transformer: false, context_dim: null, num_heads: 4, num_heads_upsample: 2 };
    const blocks = (m: UNetModel) => m.namedModules().filter(([, x]) => x instanceof AttentionBlock).map(([n, x]) => `${n}:${(x as AttentionBlock).numHeads}`);
    const l = new UNetModel(plain), nl = new UNetModel({ ...plain, legacy: false });
    assert.deepEqual(blocks(l), ['input_blocks.1.1:4', 'input_blocks.3.1:4', 'middle_block.1:4', 'output_blocks.0.1:2', 'output_blocks.1.1:2', 'output_blocks.2.1:2', 'output_blocks.3.1:2']);
    assert.deepEqual(blocks(nl), ['input_blocks.1.1:4', 'input_blocks.3.1:4', 'middle_block.1:4', 'output_blocks.0.1:4', 'output_blocks.1.1:4', 'output_blocks.2.1:4', 'output_blocks.3.1:4']);
    for (const m of [a, b, l, nl]) m.dispose();
  });

  it('rejects inconsistent cross-attention settings and contexts with clear errors', () => {
    const base = { image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [2], num_heads: 2 };
    assert.throws(() => new UNetModel({ ...base, use_spatial_transformer: true }), /use_spatial_transformer needs context_dim/);
    assert.throws(() => new UNetModel({ ...base, context_dim: 8 }), /context_dim=8 is set but use_spatial_transformer is false/);
    const plain = new UNetModel(base);
    const x = fromArray(new Float32Array(4 * 64), [1, 4, 8, 8]);
    const t = fromArray(new Float32Array([3]), [1]);
    assert.throws(() => plain.forward(x, t, undefined, fromArray(new Float32Array(8), [1, 1, 8])), /no cross-attention/);
    const xm = new UNetModel({ ...base, use_spatial_transformer: true, context_dim: 8 });
    assert.throws(() => xm.forward(x, t, undefined, fromArray(new Float32Array(6), [1, 1, 6])), /context must have shape \[1, M, 8\], got \[1, 1, 6\]/);
    plain.dispose();
    xm.dispose();
  });
});

describe('ClassEmbedder (ldm.modules.encoders.modules)', () => {
  it('labels -> (B, 1, embed_dim) rows of embedding.weight; key and errors', async () => {
    const e = new ClassEmbedder({ embed_dim: 3, n_classes: 4, key: 'label' });
    assert.deepEqual([...e.stateDict().keys()], ['embedding.weight']);
    const w = (await e.embedding.weight.data()) as Float32Array;
    const labels = fromArray(new Int32Array([2, 0]), [2], 'int32');
    const c = e.encode({ label: labels });
    assert.deepEqual([...c.shape], [2, 1, 3]);
    assert.deepEqual([...((await c.data()) as Float32Array)], [...w.slice(6, 9), ...w.slice(0, 3)]);
    assert.throws(() => e.encode({ class: labels }), /no 'label' entry/);
    assert.throws(() => e.forward(fromArray(new Float32Array([1]), [1])), /1-D int32/);
    assert.throws(() => new ClassEmbedder({ embed_dim: 0 }), /embed_dim must be a positive integer/);
    e.dispose();
  });
});
