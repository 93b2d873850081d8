// Quantization of a cross-attention UNet (use_spatial_transformer): every
// SpatialTransformer conv/linear is quantized like AttentionBlock's layers,
// to_q/to_k/to_v count as attention projections (quantizeAttention gives them
// output quantizers, as qkv), and QuantizedModel passes the context through.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { resolveQuantConfig } from '../../src/quant/config';
import { isAttentionProjection, quantizeModel } from '../../src/quant/quantize_model';
import { UNetModel } from '../../src/models/openai_unet';
import { backward, noGrad } from '../../src/tensor/autograd';
import { sum } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { runOp, fromArray, type Tensor } from '../../src/tensor/tensor';
import { randomData } from '../helpers/assert';

const T = 1000;
const XATTN_UNET = {
  image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2],
  attention_resolutions: [2], num_heads: 2, use_spatial_transformer: true, context_dim: 8,
};
const ST = 'input_blocks.3.1';
const ST_LAYERS = [
  'proj_in', 'proj_out',
  ...['attn1', 'attn2'].flatMap((a) => ['to_q', 'to_k', 'to_v', 'to_out.0'].map((l) => `transformer_blocks.0.${a}.${l}`)),
  'transformer_blocks.0.ff.net.0.proj', 'transformer_blocks.0.ff.net.2',
];

/** The UNet with its zero-initialised parameters (proj_out, out.2) set to small random values. */
function xattnUNet(seed = 0): UNetModel {
  const gen = new Generator(seed);
  const m = new UNetModel(XATTN_UNET, gen);
  noGrad(() => {
    for (const [, p] of m.namedParameters()) {
      if ((p.dataSync() as Float32Array).some((x) => x !== 0)) continue;
      const r = gen.randn(p.shape);
      const s = runOp('affine', [r], { scale: 0.05 })[0];
      runOp('copy_', [p, s]);
      r.dispose();
      s.dispose();
    }
  });
  return m;
}

const input = (shape: number[], seed: number) => fromArray(randomData(shape, seed), shape);
const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

describe('quantizing a SpatialTransformer UNet', () => {
  it('isAttentionProjection: qkv, attn q/k/v, CrossAttention to_q/to_k/to_v; not to_out, proj_in/out, ff', () => {
    for (const n of ['middle_block.1.qkv', 'encoder.mid.attn_1.q', `${ST}.transformer_blocks.0.attn1.to_q`, `${ST}.transformer_blocks.1.attn2.to_k`, 'middle_block.1.transformer_blocks.0.attn2.to_v'])
      assert.ok(isAttentionProjection(n), n);
    for (const n of [`${ST}.transformer_blocks.0.attn1.to_out.0`, `${ST}.proj_in`, `${ST}.proj_out`, `${ST}.transformer_blocks.0.ff.net.0.proj`, `${ST}.transformer_blocks.0.ff.net.2`, 'foo.to_q'])
      assert.ok(!isAttentionProjection(n), n);
  });

  it('every transformer conv/linear is quantized; quantizeAttention adds out_quant to to_q/to_k/to_v only', () => {
    const qm = quantizeModel(xattnUNet(), resolveQuantConfig({ useDynamic: false, quantizeAttention: true }), { timesteps: T, gen: new Generator(0) });
    const q = [...qm.layers.keys()];
    for (const l of ST_LAYERS) assert.ok(q.includes(`${ST}.${l}`), `${ST}.${l} is quantized`);
    for (const l of ST_LAYERS) assert.ok(q.includes(`middle_block.1.${l}`), `middle_block.1.${l} is quantized`);
    const keys = [...qm.stateDict().keys()];
    for (const a of ['attn1', 'attn2'])
      for (const l of ['to_q', 'to_k', 'to_v']) assert.ok(keys.includes(`${ST}.transformer_blocks.0.${a}.${l}.out_quant.step`), `${a}.${l} out_quant`);
    for (const l of ['proj_in', 'proj_out', 'transformer_blocks.0.attn1.to_out.0', 'transformer_blocks.0.ff.net.0.proj', 'transformer_blocks.0.ff.net.2'])
      assert.ok(!keys.includes(`${ST}.${l}.out_quant.step`), `${l}: no out_quant`);
    // Without quantizeAttention: no output quantizers anywhere.
    const plain = quantizeModel(xattnUNet(), resolveQuantConfig({ useDynamic: false }), { timesteps: T, gen: new Generator(0) });
    assert.ok(![...plain.stateDict().keys()].some((k) => k.includes('out_quant')));
    qm.dispose();
    plain.dispose();
  });

  it('QuantizedModel.forward passes the context: fp mode equals the float UNet, quant mode differs, every transformer quantizer sees its input', async () => {
    const unet = xattnUNet(1);
    const x = input([2, 1, 8, 8], 3), ctxA = input([2, 3, 8], 4), ctxB = input([2, 3, 8], 5);
    const t = fromArray([10, 700], [2]);
    const ref = await f32(noGrad(() => unet.forward(x, t, undefined, ctxA)));
    const refB = await f32(noGrad(() => unet.forward(x, t, undefined, ctxB)));
    assert.ok(ref.some((v, i) => Math.abs(v - refB[i]) > 1e-4), 'the context changes the float output');
    const qm = quantizeModel(unet, resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: false, quantizeAttention: true }), { timesteps: T, gen: new Generator(0) });
    qm.setQuantEnabled(false);
    assert.deepEqual(await f32(noGrad(() => qm.forward(x, t, undefined, ctxA))), ref);
    const seen = new Map<string, number[]>();
    qm.ctx.mode = 'observe';
    qm.ctx.observer = (q, v) => seen.set(q.name, [...v.shape]);
    noGrad(() => qm.forward(x, t, undefined, ctxA));
    qm.ctx.observer = null;
    for (const l of ST_LAYERS) assert.ok(seen.has(`${ST}.${l}.act_quant`), `${ST}.${l}.act_quant observed`);
    assert.deepEqual(seen.get(`${ST}.transformer_blocks.0.attn2.to_k.act_quant`), [2, 3, 8], 'attn2.to_k quantizes the context');
    assert.deepEqual(seen.get(`${ST}.transformer_blocks.0.attn1.to_k.act_quant`), [2, 16, 64], 'attn1.to_k quantizes the pixels');
    assert.ok(seen.has(`${ST}.transformer_blocks.0.attn2.to_v.out_quant`));
    qm.setQuantEnabled(true);
    const quant = await f32(noGrad(() => qm.forward(x, t, undefined, ctxA)));
    assert.ok(quant.some((v, i) => Math.abs(v - ref[i]) > 1e-4), 'quantization changes the output');
    // QAT: gradients reach the transformer's quantizer steps and the context.
    ctxA.requiresGrad = true;
    backward(sum(qm.forward(x, t, undefined, ctxA)));
    const params = new Map(qm.namedParameters());
    for (const k of [`${ST}.transformer_blocks.0.attn2.to_k.act_quant.step`, `${ST}.transformer_blocks.0.attn2.to_q.out_quant.step`, `${ST}.transformer_blocks.0.ff.net.2.weight_quant.step`]) {
      const g = params.get(k)?.grad;
      assert.ok(g, `${k} has a gradient`);
      assert.ok((await f32(g)).some((v) => v !== 0), `${k}: non-zero gradient`);
    }
    assert.ok(ctxA.grad && (await f32(ctxA.grad)).some((v) => v !== 0), 'the context gets a gradient');
    qm.dispose();
  });
});
