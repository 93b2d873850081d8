import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Conv1x1, Conv2d, Linear } from '../../src/nn/layers';
import { levels, resolveQuantConfig } from '../../src/quant/config';
import { QuantConv1x1, QuantConv2d, QuantLinear, type QuantLayer, quantLayerOf } from '../../src/quant/quant_layers';
import { ActQuantizer, QuantContext, SILU_MIN, WeightQuantizer } from '../../src/quant/quantizer';
import { backward } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { assertClose, randomData } from '../helpers/assert';
import { type Arr, Oracle, torchUnavailable } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// Boundary-safe data (every x / s at least 0.05 from a rounding tie or a clamp
// limit) makes float32 and float64 take the same rounding decisions, so what is
// left is float32 GEMM / conv accumulation against float64.
const RTOL = 2e-5;
// The step gradients are sums of many signed terms (LSQ), more sensitive to
// the accumulation order.
const RTOL_STEP = 1e-4;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const arrOf = (t: Tensor): Arr => ({ shape: [...t.shape], data: t.dataSync() as Float32Array });

/** Values s_i * (k + u) + z with integer k over the levels (and 2 beyond) and 0.05 <= |u| <= 0.45. */
function boundarySafe(n: number, stepOf: (i: number) => number, qmin: number, qmax: number, seed: number, z = 0): Float32Array {
  const g = new Generator(seed);
  return Float32Array.from({ length: n }, (_, i) => {
    const k = qmin - 2 + g.randint(qmax - qmin + 5);
    const u = (g.randint(2) ? 1 : -1) * (0.05 + 0.4 * (g.randint(1 << 20) / (1 << 20)));
    return z + stepOf(i) * (k + u);
  });
}

interface LayerCase {
  name: string;
  kind: 'conv2d' | 'linear' | 'conv1x1';
  xShape: number[];
  make: (gen: Generator) => Conv2d | Linear | Conv1x1;
  bitsW: number;
  bitsA: number;
  granularity: 'tensor' | 'sample';
  zeroPoint: number;
  signed: boolean;
  gradScaleNone?: boolean;
  attrs?: Record<string, unknown>;
}

const CASES: LayerCase[] = [
  { name: 'Conv2d 3x3 stride 2 pad 1, static LSQ, signed, W4A6', kind: 'conv2d', xShape: [2, 3, 9, 9], make: (g) => new Conv2d(3, 5, 3, { stride: 2, padding: 1, gen: g }),
    bitsW: 4, bitsA: 6, granularity: 'tensor', zeroPoint: 0, signed: true, attrs: { stride: 2, padding: 1 } },
  { name: 'Conv2d 3x3, per-sample (TDQ) steps, SiLU zero point, W3A4', kind: 'conv2d', xShape: [3, 4, 6, 6], make: (g) => new Conv2d(4, 6, 3, { padding: 1, gen: g }),
    bitsW: 3, bitsA: 4, granularity: 'sample', zeroPoint: SILU_MIN, signed: false, attrs: { stride: 1, padding: 1 } },
  { name: 'Linear, static, unsigned, plain step gradient, W8A8', kind: 'linear', xShape: [4, 20], make: (g) => new Linear(20, 7, { gen: g }),
    bitsW: 8, bitsA: 8, granularity: 'tensor', zeroPoint: 0, signed: false, gradScaleNone: true },
  { name: 'Conv1x1 (attention qkv), per-sample steps, signed, W2A3', kind: 'conv1x1', xShape: [2, 8, 10], make: (g) => new Conv1x1(8, 12, { gen: g }),
    bitsW: 2, bitsA: 3, granularity: 'sample', zeroPoint: 0, signed: true },
];

function install(c: LayerCase, gen: Generator): { layer: Conv2d | Linear | Conv1x1; ql: QuantLayer; ctx: QuantContext } {
  const cfg = resolveQuantConfig({ nBitW: c.bitsW, nBitA: c.bitsA, useDynamic: c.granularity === 'sample', actGradScale: c.gradScaleNone ? 'none' : 'lsq' });
  const ctx = new QuantContext(1000, cfg.tdq.encDim, cfg.tdq.maxPeriod);
  const layer = c.make(gen);
  const parts = {
    actQuant: new ActQuantizer('layer.act_quant', c.bitsA, cfg, ctx, gen),
    weightQuant: new WeightQuantizer(layer.weight.shape[0], c.bitsW, ctx),
  };
  const ql = layer instanceof Conv2d ? new QuantConv2d('layer', layer, parts) : layer instanceof Linear ? new QuantLinear('layer', layer, parts) : new QuantConv1x1('layer', layer, parts);
  ql.actQuant.setRange({ signed: c.signed, zeroPoint: c.zeroPoint });
  return { layer, ql, ctx };
}

describe('quantized layers against a PyTorch reference of the same formula', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  for (const c of CASES) {
    it(`${c.name}: forward and d(x, W, b, act step, weight steps), every CPU level`, async () => {
      const gen = new Generator(11);
      const { layer, ql, ctx } = install(c, gen);
      const B = c.xShape[0], per = c.xShape.reduce((a, b) => a * b, 1) / B;
      const outCh = layer.weight.shape[0], perW = layer.weight.size / outCh;
      const { qmin: aMin, qmax: aMax } = levels(c.bitsA, c.signed);
      const { qmin: wMin, qmax: wMax } = levels(c.bitsW, true);
      // Steps: per sample (TDQ) or one; per output channel for weights.
      const aSteps = Float32Array.from({ length: c.granularity === 'sample' ? B : 1 }, (_, i) => (2 / aMax) * (0.5 + 0.3 * i));
      const wSteps = Float32Array.from({ length: outCh }, (_, o) => (0.4 / wMax) * (0.7 + 0.1 * o));
      const x = boundarySafe(B * per, (i) => aSteps[c.granularity === 'sample' ? Math.floor(i / per) : 0], aMin, aMax, 1, c.zeroPoint);
      const w = boundarySafe(layer.weight.size, (i) => wSteps[Math.floor(i / perW)], wMin, wMax, 2);
      layer.loadStateDict(new Map([['weight', fromArray(w, layer.weight.shape)]]), { strict: false });
      ql.weightQuant.setSteps(wSteps);
      const stepLeaf = fromArray(aSteps, [aSteps.length]);
      stepLeaf.requiresGrad = true;
      // The per-sample steps come from the TDQ MLP in the model; here they are a leaf, to check their gradient.
      if (c.granularity === 'sample') ql.actQuant.stepTensor = () => stepLeaf;
      else ql.actQuant.setStaticStep(aSteps[0]);
      const probe = (() => {
        ctx.begin(fromArray(new Float32Array(B), [B]));
        try {
          return layer.forward(fromArray(x, c.xShape));
        } finally {
          ctx.end();
        }
      })();
      const gy = randomData([...probe.shape], 3);
      const ref = await oracle.call(`quant_${c.kind}`, {
        x: { shape: c.xShape, data: x }, weight: arrOf(layer.weight), bias: arrOf(layer.bias!),
        act_step: { shape: [aSteps.length], data: aSteps }, w_step: { shape: [outCh], data: wSteps },
      }, {
        bits_a: c.bitsA, bits_w: c.bitsW, signed_a: c.signed, zero_point: c.zeroPoint, act_granularity: c.granularity,
        ...(c.gradScaleNone ? { act_grad_scale: 'none' } : {}), ...(c.attrs ?? {}),
      }, { wrt: ['x', 'weight', 'bias', 'act_step', 'w_step'], gradOutputs: [{ shape: [...probe.shape], data: gy }] });
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          layer.zeroGrad();
          stepLeaf.grad = null;
          const xt = fromArray(x, c.xShape);
          xt.requiresGrad = true;
          ctx.begin(fromArray(new Float32Array(B), [B]));
          const y = layer.forward(xt);
          ctx.end();
          backward(y, fromArray(gy, [...y.shape]));
          const what = `${level}`;
          assertClose(await f32(y), ref.outputs[0].data, RTOL, `${what}: y`);
          assertClose(await f32(xt.grad!), ref.grads.x.data, RTOL, `${what}: dx`);
          assertClose(await f32(layer.weight.grad!), ref.grads.weight.data, RTOL, `${what}: dW`);
          assertClose(await f32(layer.bias!.grad!), ref.grads.bias.data, RTOL, `${what}: db`);
          const actStepGrad = c.granularity === 'sample' ? stepLeaf.grad! : ql.actQuant.step!.grad!;
          assertClose(await f32(actStepGrad), ref.grads.act_step.data, RTOL_STEP, `${what}: d act step`);
          assertClose(await f32(ql.weightQuant.step.grad!), ref.grads.w_step.data, RTOL_STEP, `${what}: d weight steps`);
        });
      }
    });
  }

  for (const signed of [true, false]) {
    it(`PACT (${signed ? 'signed' : 'unsigned'}): forward and d(x, alpha) match the clip-and-STE formula`, async () => {
      const cfg = resolveQuantConfig({ nBitA: 4, useDynamic: false, staticMethod: 'pact' });
      const ctx = new QuantContext(1000, 64, 10000);
      const q = new ActQuantizer('pact', 4, cfg, ctx, new Generator(0));
      q.setRange({ signed, zeroPoint: 0 });
      const alpha = 1.3;
      q.setStaticStep(alpha / levels(4, signed).qmax);
      const { qmax } = levels(4, signed);
      const x = boundarySafe(600, () => alpha / qmax, signed ? -qmax - 3 : -3, qmax + 1, 5);
      const gy = randomData([600], 6);
      const ref = await oracle.call('pact', { x: { shape: [600], data: x }, alpha: { shape: [1], data: Float32Array.of(alpha) } },
        { bits: 4, signed }, { wrt: ['x', 'alpha'], gradOutputs: [{ shape: [600], data: gy }] });
      const xt = fromArray(x, [600]);
      xt.requiresGrad = true;
      const y = q.forward(xt);
      backward(y, fromArray(gy, [600]));
      assertClose(await f32(y), ref.outputs[0].data, 1e-6, 'y');
      assertClose(await f32(xt.grad!), ref.grads.x.data, 0, 'dx');
      assertClose(await f32(q.alpha!.grad!), ref.grads.alpha.data, 1e-6, 'd alpha');
    });
  }
});

describe('quantized layer installation', () => {
  it('keeps the float parameter names and adds the quantizers under the layer; refuses a second install', () => {
    const gen = new Generator(0);
    const { layer, ql } = install(CASES[0], gen);
    assert.deepEqual(layer.namedParameters().map(([n]: [string, unknown]) => n), ['weight', 'bias', 'act_quant.step', 'weight_quant.step']);
    assert.deepEqual([...layer.stateDict().keys()], ['weight', 'bias', 'act_quant.step', 'act_quant.signed', 'act_quant.zero_point', 'weight_quant.step']);
    assert.equal(quantLayerOf(layer), ql);
    assert.throws(() => new QuantConv2d('layer', layer as Conv2d, { actQuant: ql.actQuant, weightQuant: ql.weightQuant }), /already quantized/);
  });

  it('"fp" mode runs the float layer exactly; TDQ quantizers need the timesteps', async () => {
    const gen = new Generator(1);
    const { layer, ctx } = install(CASES[1], gen);
    const x = fromArray(randomData([3, 4, 6, 6], 9), [3, 4, 6, 6]);
    ctx.mode = 'fp';
    const yq = await f32(layer.forward(x));
    const { conv2d } = await import('../../src/tensor/ops/conv');
    const yf = await f32(conv2d(x, layer.weight, layer.bias, { padding: 1 }));
    assert.deepEqual(Array.from(yq), Array.from(yf));
    ctx.mode = 'quant';
    assert.throws(() => layer.forward(x), /no timesteps for this forward/);
  });

  it('a bypassed activation quantizer passes its input through; the weights stay quantized', async () => {
    const gen = new Generator(2);
    const { layer, ql, ctx } = install(CASES[0], gen);
    const x = fromArray(randomData(CASES[0].xShape, 4), CASES[0].xShape);
    ql.actQuant.setStaticStep(0.5); // coarse: quantizing x would change the output
    ql.weightQuant.setSteps(new Float32Array(layer.weight.shape[0]).fill(0.05));
    ctx.mode = 'quant';
    const quantized = await f32(layer.forward(x));
    ql.actQuant.bypass = true;
    const bypassed = await f32(layer.forward(x));
    const wq = ql.weightQuant.forward(layer.weight);
    ctx.mode = 'fp';
    ql.actQuant.bypass = false;
    const { conv2d } = await import('../../src/tensor/ops/conv');
    const conv = layer as Conv2d;
    const expected = await f32(conv2d(x, wq, conv.bias, { stride: conv.stride, padding: conv.padding }));
    assert.deepEqual(Array.from(bypassed), Array.from(expected));
    assert.notDeepEqual(Array.from(quantized), Array.from(bypassed));
  });
});
