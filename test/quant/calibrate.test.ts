import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Linear } from '../../src/nn/layers';
import { Module } from '../../src/nn/module';
import { calibrateWithReport, fitTdqModules } from '../../src/quant/calibrate';
import { DEFAULT_TDQ_MODULE, resolveQuantConfig } from '../../src/quant/config';
import { TdqModule } from '../../src/quant/tdq';
import { noGrad } from '../../src/tensor/autograd';
import { affine, mul, reshape } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { SCHEDULE } from './helpers';

/**
 * A model whose quantized layer sees a known activation at every timestep:
 * h = pattern * a(t), a(t) = 0.05 + 1.5 t / 1000, pattern fixed with exact
 * ends -1 (or 0) and 1; the output lin(h) is the "noise".
 */
class KnownRange extends Module {
  readonly lin: Linear;
  constructor(private readonly pattern: Float32Array) {
    super();
    this.lin = this.registerModule('lin', new Linear(pattern.length, pattern.length, { gen: new Generator(1) }));
  }
  forward(x: Tensor, t: Tensor): Tensor {
    const n = this.pattern.length;
    const a = reshape(affine(t, 1.5 / 1000, 0.05), [x.shape[0], 1]);
    return this.lin.forward(mul(fromArray(this.pattern, [1, n]), a));
  }
}
const a = (t: number) => 0.05 + (1.5 * t) / 1000;

describe('calibration on synthetic data', () => {
  for (const signed of [true, false]) {
    it(`recovers the known per-timestep ranges (${signed ? 'signed' : 'unsigned'}), and the fitted TDQ follows them`, async () => {
      const pattern = Float32Array.from({ length: 16 }, (_, i) => (signed ? -1 + (2 * i) / 15 : i / 15));
      const { model: qm, report } = await calibrateWithReport(new KnownRange(pattern), resolveQuantConfig({ nBitA: 8, nBitW: 8 }), {
        schedule: SCHEDULE, steps: 10, nSamples: 3, batchSize: 2, seed: 0, method: 'minmax', sampleShape: [16], fitIters: 1500,
      });
      const [q] = report.quantizers;
      assert.equal(q.name, 'lin.act_quant');
      assert.deepEqual(q.range, { signed, zeroPoint: 0 });
      // DDIM 'uniform' with 10 steps of T = 1000: t = 1, 101, ..., 901.
      assert.deepEqual(q.t, Array.from({ length: 10 }, (_, i) => 1 + 100 * i));
      const qmax = signed ? 127 : 255;
      q.t.forEach((t, i) => assert.ok(Math.abs(q.steps[i] / (a(t) / qmax) - 1) < 1e-6, `t ${t}: step ${q.steps[i]} vs ${a(t) / qmax}`));
      // The static step covers the largest range seen.
      assert.ok(Math.abs(q.staticStep / (a(901) / qmax) - 1) < 1e-6);
      // The fitted MLP reproduces the per-timestep steps.
      const act = qm.actQuantizers()[0];
      const s = noGrad(() => tidy(() => act.tdq!.forward(act.tdq!.encode(q.t)))).dataSync() as Float32Array;
      q.t.forEach((t, i) => assert.ok(Math.abs(s[i] / q.steps[i] - 1) < 0.05, `TDQ at t ${t}: ${s[i]} vs ${q.steps[i]}`));
      assert.ok(q.fitRmsLog! < 0.03, `fit rms log error ${q.fitRmsLog}`);
      // Statistics are kept in the state dict for plots.
      const sd = qm.stateDict();
      assert.deepEqual(Array.from(sd.get('lin.act_quant.calib_t')!.dataSync()), q.t);
      assert.ok(Math.abs((sd.get('lin.act_quant.calib_max')!.dataSync()[9]) / a(901) - 1) < 1e-6);
      qm.dispose();
    });
  }

  it('fits several TDQ modules at once to curves over two decades', () => {
    const cfg = { ...DEFAULT_TDQ_MODULE };
    const mods = [new TdqModule(cfg, new Generator(1)), new TdqModule(cfg, new Generator(2))];
    const ts = Array.from({ length: 20 }, (_, i) => 1 + 50 * i);
    const up = (t: number) => 0.002 * (1 + 99 * (t / 999) ** 2);
    const down = (t: number) => 0.5 * Math.exp(-t / 300) + 0.01;
    const rms = fitTdqModules(mods, [{ t: ts, step: ts.map(up) }, { t: ts, step: ts.map(down) }], { timesteps: 1000 });
    assert.ok(rms.every((r) => r < 0.05), `rms log errors ${rms}`);
    for (const [k, f] of [up, down].entries()) {
      const s = noGrad(() => tidy(() => mods[k].forward(mods[k].encode(ts)))).dataSync() as Float32Array;
      ts.forEach((t, i) => assert.ok(Math.abs(s[i] / f(t) - 1) < 0.1, `curve ${k} t ${t}: ${s[i]} vs ${f(t)}`));
    }
    assert.throws(() => fitTdqModules(mods, [{ t: ts, step: ts.map(up) }], { timesteps: 1000 }), /2 modules for 1 targets/);
    for (const m of mods) m.dispose();
  });

  it('rejects bad options', async () => {
    const cfg = resolveQuantConfig({});
    const m = new KnownRange(Float32Array.of(-1, 1));
    await assert.rejects(calibrateWithReport(m, cfg, { schedule: SCHEDULE, nSamples: 0, seed: 0, method: 'mse', sampleShape: [2] }), /nSamples must be a positive integer/);
    await assert.rejects(calibrateWithReport(m, cfg, { schedule: SCHEDULE, nSamples: 1, seed: 0, method: 'mse' }), /sampleShape \(C, H, W\) is required/);
  });
});
