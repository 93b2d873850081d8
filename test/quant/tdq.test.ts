import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { DEFAULT_TDQ_MODULE, type TdqModuleConfig } from '../../src/quant/config';
import { TdqModule, encodeTimesteps, fourierEncoding, inverseSoftplus, softplus } from '../../src/quant/tdq';
import { backward } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { type Tensor, fromArray, runOp1, sync } from '../../src/tensor/tensor';
import { assertClose, maxAbsError, randomData } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// softplus: float32 log1p/exp vs float64 (a few ulps).
const RTOL_SOFTPLUS = 1e-6;
// The MLP: float32 GEMMs with K <= 64 vs float64.
const RTOL_MLP = 2e-5;
// The encoding: float64 values rounded once to float32.
const RTOL_ENC = 1e-7;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const arr = (t: Tensor) => ({ shape: [...t.shape], data: t.dataSync() as Float32Array });

describe('softplus op', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  it('forward and backward match torch (float64), including |x| > 20', async () => {
    const x = randomData([3, 257], 1, 8);
    x[0] = 25;
    x[1] = -25;
    x[2] = 20.5;
    const gy = randomData([3, 257], 2);
    const ref = await oracle.call('softplus', { x: { shape: [3, 257], data: x } }, {}, { wrt: ['x'], gradOutputs: [{ shape: [3, 257], data: gy }] });
    const xt = fromArray(x, [3, 257]);
    xt.requiresGrad = true;
    const y = softplus(xt);
    backward(y, fromArray(gy, [3, 257]));
    assertClose(await f32(y), ref.outputs[0].data, RTOL_SOFTPLUS, 'softplus');
    assertClose(await f32(xt.grad!), ref.grads.x.data, RTOL_SOFTPLUS, 'd softplus');
  });

  it('stays positive and accurate far below zero (a step size must never be 0)', async () => {
    const xs = [-20, -50, -87, -100];
    const y = await f32(softplus(fromArray(xs, [4])));
    for (const [i, x] of xs.entries()) {
      assert.ok(y[i] > 0, `softplus(${x}) = ${y[i]}`);
      // Accurate while exp(x) is a normal float32 (above -87.3); denormal below.
      if (x >= -87) assert.ok(Math.abs(y[i] / Math.exp(x) - 1) < 1e-5, `softplus(${x}) = ${y[i]} vs ${Math.exp(x)}`);
    }
  });

  it('rejects bad attributes and dtypes, naming them', async () => {
    const x = fromArray([1], [1]);
    assert.throws(() => runOp1('softplus_forward', [x], { beta: 0 }), (e: Error) => e instanceof RangeError && /'beta'/.test(e.message));
    assert.throws(() => runOp1('softplus_forward', [x], { threshold: Infinity }), (e: Error) => e instanceof RangeError && /'threshold'/.test(e.message));
    assert.throws(() => runOp1('softplus_forward', [fromArray([1], [1], 'int32')]), (e: Error) => e instanceof TypeError && /'x'/.test(e.message));
    assert.throws(() => runOp1('softplus_backward', [fromArray([1, 2], [2]), x]), (e: Error) => e instanceof RangeError && /'gy'/.test(e.message));
    await sync();
  });

  it('inverseSoftplus inverts softplus from 1e-6 to 100', async () => {
    const ys = [1e-6, 1e-3, 0.05, 1, 7, 30, 100];
    const y = await f32(softplus(fromArray(ys.map(inverseSoftplus), [ys.length])));
    ys.forEach((v, i) => assert.ok(Math.abs(y[i] / v - 1) < 1e-6, `${v} -> ${y[i]}`));
    assert.throws(() => inverseSoftplus(0), RangeError);
  });
});

describe('TDQ module against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  it('the encoding is openaimodel timestep_embedding (cos then sin, geometric frequencies), fractional t too', async () => {
    const t = [0, 1, 17, 500.5, 999, 123.25];
    for (const dim of [2, 16, 64]) {
      const enc = fourierEncoding(t, dim, 10000);
      const ref = await oracle.call('tdq_encoding', { t: { shape: [t.length], data: Float32Array.from(t) } }, { dim, max_period: 10000 });
      assertClose(enc, ref.outputs[0].data, RTOL_ENC, `dim ${dim}`);
    }
    // The engine's float32 version (what the module uses): t * f rounded to
    // float32 moves sin/cos by up to |t| * 2^-24.
    for (const dim of [16, 64]) {
      const ref = await oracle.call('tdq_encoding', { t: { shape: [t.length], data: Float32Array.from(t) } }, { dim, max_period: 10000 });
      const enc = await f32(encodeTimesteps(fromArray(t, [t.length]), dim));
      assert.ok(maxAbsError(enc, ref.outputs[0].data) < 1e-4, `engine encoding, dim ${dim}: ${maxAbsError(enc, ref.outputs[0].data)}`);
    }
    assert.throws(() => encodeTimesteps(fromArray([1], [1], 'int32'), 4), /float32/);
    assert.throws(() => fourierEncoding([1], 3), /even integer/);
    assert.throws(() => fourierEncoding([NaN], 4), /timestep 0 is NaN/);
  });

  const shapes: [string, TdqModuleConfig][] = [
    ['paper shape (64-64, 4 layers)', { ...DEFAULT_TDQ_MODULE }],
    ['one layer', { ...DEFAULT_TDQ_MODULE, encDim: 8, hidden: 5, layers: 1 }],
    ['two layers, odd widths', { ...DEFAULT_TDQ_MODULE, encDim: 10, hidden: 7, layers: 2 }],
  ];
  for (const [name, cfg] of shapes) {
    it(`forward and backward of every weight and the input match autograd (${name}), every CPU level`, async () => {
      const B = 9;
      const m = new TdqModule(cfg, new Generator(3));
      const ts = Array.from({ length: B }, (_, i) => i * 111.5);
      const gy = randomData([B], 4);
      const inputs: Record<string, { shape: number[]; data: Float32Array }> = {
        enc: { shape: [B, cfg.encDim], data: fourierEncoding(ts, cfg.encDim) },
      };
      m.mlp.layers.forEach((l, k) => {
        inputs[`w${k}`] = arr(l.weight);
        inputs[`b${k}`] = arr(l.bias);
      });
      const wrt = Object.keys(inputs);
      const ref = await oracle.call('tdq_module', inputs, { layers: cfg.layers }, { wrt, gradOutputs: [{ shape: [B], data: gy }] });
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          m.zeroGrad();
          const enc = m.encode(ts);
          enc.requiresGrad = true;
          const y = m.forward(enc);
          assert.deepEqual([...y.shape], [B]);
          backward(y, fromArray(gy, [B]));
          assertClose(await f32(y), ref.outputs[0].data, RTOL_MLP, `${level}: steps`);
          assertClose(await f32(enc.grad!), ref.grads.enc.data, RTOL_MLP, `${level}: d enc`);
          for (const [k, l] of m.mlp.layers.entries()) {
            assertClose(await f32(l.weight.grad!), ref.grads[`w${k}`].data, RTOL_MLP, `${level}: d w${k}`);
            assertClose(await f32(l.bias.grad!), ref.grads[`b${k}`].data, RTOL_MLP, `${level}: d b${k}`);
          }
        });
      }
      m.dispose();
    });
  }

  it('keys are mlp.<k>.weight / bias; initConstant sets softplus(last bias); shape errors are clear', async () => {
    const m = new TdqModule({ ...DEFAULT_TDQ_MODULE, layers: 3 }, new Generator(0));
    assert.deepEqual(m.namedParameters().map(([n]) => n), ['mlp.0.weight', 'mlp.0.bias', 'mlp.1.weight', 'mlp.1.bias', 'mlp.2.weight', 'mlp.2.bias']);
    m.initConstant(0.02);
    const b = await f32(softplus(m.lastLayer.bias));
    assert.ok(Math.abs(b[0] / 0.02 - 1) < 1e-5);
    assert.throws(() => m.forward(fromArray(new Float32Array(10), [2, 5])), /expected an encoding of shape \[B, 64\], got \[2, 5\]/);
    m.dispose();
  });
});
