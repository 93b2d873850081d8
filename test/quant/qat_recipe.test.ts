// The authors' QAT recipe (TDQ code: lsq.py `_QuantAct.initialize`,
// `TDQ_Module.initialize`; ddpm.py configure_optimizers): activation steps
// from the mean and standard deviation of the calibration activations, TDQ
// MLPs starting at the static step for every t, three optimizer groups
// (weights, steps at a tenth, MLPs); and W3A3 from training to sampling.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { sample } from '../../src/diffusion/samplers/index';
import { loadModel } from '../../src/models/load';
import { calibrateWithReport } from '../../src/quant/calibrate';
import { levels, resolveQuantConfig } from '../../src/quant/config';
import { qatPrepare } from '../../src/quant/qat';
import { SILU_MIN } from '../../src/quant/quantizer';
import { inverseSoftplus } from '../../src/quant/tdq';
import { searchStep, statsOf, statsStep, weightSteps } from '../../src/quant/step_search';
import { readSafetensors } from '../../src/io/safetensors';
import { train } from '../../src/train/trainer';
import { qatConfig, quickCalib, writeFpCheckpoint } from './qat_helpers';
import { tinyUNet, SCHEDULE } from './helpers';

describe("QAT init: the authors' step from activation statistics", () => {
  it('signed: (mean + 3 std) / qmax; unsigned: (mean + 16 std) / qmax; per observation averaged', () => {
    const x = Float32Array.from([-1, 0, 1, 2]); // mean 0.5, population std sqrt(1.25)
    const st = statsOf(x);
    assert.ok(Math.abs(st.mean - 0.5) < 1e-12 && Math.abs(st.std - Math.sqrt(1.25)) < 1e-12);
    const signed = { signed: true, zeroPoint: 0 }, silu = { signed: false, zeroPoint: SILU_MIN };
    assert.ok(Math.abs(searchStep(x, -1, 2, 4, signed, { method: 'stats' }) - (0.5 + 3 * Math.sqrt(1.25)) / 7) < 1e-12);
    assert.ok(Math.abs(searchStep(x, -1, 2, 3, silu, { method: 'stats' }) - (0.5 + 16 * Math.sqrt(1.25)) / 7) < 1e-12);
    // Two observations: means and deviations averaged, not pooled.
    const s2 = statsStep([{ mean: 1, std: 1 }, { mean: 3, std: 0 }], 8, signed, 99);
    assert.ok(Math.abs(s2 - (2 + 3 * 0.5) / levels(8, true).qmax) < 1e-12);
    // A negative centre falls back (to the min-max step the caller passes).
    assert.equal(statsStep([{ mean: -5, std: 1 }], 8, signed, 0.25), 0.25);
    // Weights: per-channel max / qmax.
    assert.deepEqual(Array.from(weightSteps(Float32Array.from([0.7, -0.1, 0.2, -1.4]), 2, 3, 'stats')), [Math.fround(0.7 / 3), Math.fround(1.4 / 4)]);
  });

  it("TDQ with tdqInit 'constant' starts at the static model's step for every t; 'fit' does not", async () => {
    const calib = { schedule: SCHEDULE, steps: 4, nSamples: 2, seed: 0, sampleShape: [1, 8, 8], method: 'stats' as const };
    const st = await calibrateWithReport(tinyUNet(), resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: false }), calib);
    const td = await calibrateWithReport(tinyUNet(), resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true }), { ...calib, tdqInit: 'constant' });
    const fit = await calibrateWithReport(tinyUNet(), resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true }), { ...calib, fitIters: 20 });
    for (const m of [td.model, fit.model]) m.buildTable();
    const stSteps = new Map(st.model.actQuantizers().map((q) => [q.name, (q.step!.dataSync() as Float32Array)[0]]));
    let differs = 0;
    for (const [i, q] of td.model.actQuantizers().entries()) {
      const want = stSteps.get(q.name)!;
      const r = st.report.quantizers.find((x) => x.name === q.name)!;
      // The static step is the stats rule over the calibration timesteps.
      assert.ok(Math.abs(r.staticStep - want) <= 1e-6 * want, `${q.name}: static ${want} vs report ${r.staticStep}`);
      for (const v of q.table!.values) assert.ok(Math.abs(v - want) <= 1e-5 * want, `${q.name}: TDQ starts at ${v}, static step ${want}`);
      const f = fit.model.actQuantizers()[i].table!.values;
      if (Math.abs(f[0] - f[f.length - 1]) > 1e-3 * want) differs++;
    }
    assert.ok(differs > 0, 'the fitted init follows t (so the constant one is a real change)');
    // 'bias': the authors' own: only the last bias, random last weights kept.
    const bias = await calibrateWithReport(tinyUNet(), resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true }), { ...calib, tdqInit: 'bias' });
    for (const q of bias.model.actQuantizers()) {
      const want = stSteps.get(q.name)!;
      assert.ok(Math.abs((q.tdq!.lastLayer.bias.dataSync() as Float32Array)[0] - inverseSoftplus(want)) <= 1e-6 * Math.abs(inverseSoftplus(want)) + 1e-7);
      assert.ok((q.tdq!.lastLayer.weight.dataSync() as Float32Array).some((v) => v !== 0), 'random last weights kept');
    }
    for (const m of [st.model, td.model, fit.model, bias.model]) m.dispose();
  });
});

describe('QAT parameter groups', () => {
  it('float weights at lr, quantizer steps at quantLr, TDQ MLPs at tdqLr', async () => {
    const config = qatConfig(2);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-qat-groups-'));
    const fp = await writeFpCheckpoint(dir, config);
    const unet = (await loadModel(fp, { expect: 'float' })).model;
    const p = await qatPrepare(resolveQuantConfig({ nBitW: 4, nBitA: 8, useDynamic: true }), { ...quickCalib(config), method: 'stats', tdqInit: 'constant', quantLr: (lr) => lr / 10, tdqLr: (lr) => lr })(unet);
    const g = p.groups(2e-4);
    assert.deepEqual(g.map((x) => [x.name, x.lr]), [['float', 2e-4], ['quant', 2e-5], ['tdq', 2e-4]]);
    const names = (i: number) => g[i].params.map((x) => (Array.isArray(x) ? x[0] : ''));
    assert.ok(names(1).includes('input_blocks.1.0.in_layers.2.weight_quant.step'));
    assert.ok(names(1).every((n) => !n.includes('.tdq.')));
    assert.ok(names(2).includes('input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.3.bias'));
    assert.ok(names(2).every((n) => n.includes('.tdq.mlp.')));
    assert.ok(names(0).every((n) => !n.includes('_quant.')));
    p.model.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('W3A3 end to end', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-w3a3-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('trains TDQ W3A3, exports 3-bit levels, loads and samples', async () => {
    const config = qatConfig(2);
    const fp = await writeFpCheckpoint(dir, config);
    const cfg = resolveQuantConfig({ nBitW: 3, nBitA: 3, useDynamic: true });
    const r = await train({ config, outDir: path.join(dir, 'run'), initCheckpoint: fp, print: null, prepare: qatPrepare(cfg, { ...quickCalib(config), method: 'stats', tdqInit: 'constant' }) });
    assert.equal(r.step, 2);
    assert.ok(r.exported);
    const { tensors, metadata } = await readSafetensors(r.exported!);
    assert.equal(metadata?.quant_weights, 'int');
    const packed = tensors.get('model.input_blocks.1.0.in_layers.2.weight_int4') ?? tensors.get('input_blocks.1.0.in_layers.2.weight_int4');
    assert.ok(packed, `keys: ${[...tensors.keys()].filter((k) => k.includes('in_layers.2')).join(', ')}`);
    const bytes = (await packed!.data()) as Uint8Array;
    const nib = (n: number) => (n >= 8 ? n - 16 : n);
    const seen = new Set<number>();
    for (const b of bytes) for (const v of [nib(b & 15), nib(b >> 4)]) seen.add(v);
    for (const v of seen) assert.ok(v >= -4 && v <= 3, `3-bit level ${v}`);
    assert.ok(seen.size > 4, `levels used: ${[...seen]}`);
    for (const t of tensors.values()) t.dispose();
    const m = await loadModel(r.exported!, { config });
    assert.ok(m.quantized);
    const x = await sample((x, t) => m.model.forward(x, t), { sampler: 'ddim', steps: 4, schedule: quickCalib(config).schedule, shape: [2, 1, 8, 8], seed: 0 });
    assert.ok(((await x.data()) as Float32Array).every(Number.isFinite));
    x.dispose();
    m.dispose();
  });
});
