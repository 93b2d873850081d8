// Distillation for QAT (src/train/distill.ts): the loss is the MSE between
// the quantized model's noise prediction and the frozen FP model's on the same
// noisy input and timestep, mixed with the diffusion loss by a weight; its
// gradients reach the weights and the quantizer parameters; a run stopped
// and resumed ends where an uninterrupted one does.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PixelDiffusion, type Denoiser } from '../../src/models/diffusion';
import { loadModel } from '../../src/models/load';
import { readSafetensors } from '../../src/io/safetensors';
import { resolveQuantConfig, type QuantConfig } from '../../src/quant/config';
import { qatPrepare } from '../../src/quant/qat';
import type { QuantizedModel } from '../../src/quant/quantize_model';
import { backward, noGrad } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { fromArray } from '../../src/tensor/tensor';
import { distillLoss } from '../../src/train/distill';
import { train } from '../../src/train/trainer';
import { qatConfig, quickCalib, writeFpCheckpoint } from '../quant/qat_helpers';

describe('distillation loss', () => {
  let dir: string, fp: string;
  const config = qatConfig(4);
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-distill-'));
    fp = await writeFpCheckpoint(dir, config);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const teacher = async (): Promise<Denoiser> => {
    const t = (await loadModel(fp, { config, expect: 'float' })).model;
    t.eval();
    return t;
  };
  const student = async (cfg: QuantConfig): Promise<QuantizedModel> =>
    (await qatPrepare(cfg, { ...quickCalib(config), method: 'stats', tdqInit: 'constant' })((await loadModel(fp, { config, expect: 'float' })).model)).model;
  const x0 = () => new Generator(9).randn([4, 1, 8, 8]);

  it('at step 0 equals the measured MSE between student and teacher eps on the same x_t and t; w = 0 is the plain loss', async () => {
    const te = await teacher(), st = await student(resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true }));
    const diff = new PixelDiffusion(config.model, st);
    const x = x0();
    const got = noGrad(() => tidy(() => distillLoss(diff, { teacher: te, weight: 1 }, x, new Generator(5)).loss));
    const value = (got.dataSync() as Float32Array)[0];
    // The same draws by hand: timesteps, then noise.
    const g = new Generator(5);
    const T = diff.schedule.numTimesteps;
    const ts = Array.from({ length: 4 }, () => g.randint(T));
    const noise = g.randn([4, 1, 8, 8]).dataSync() as Float32Array;
    const xv = x.dataSync() as Float32Array;
    const xt = new Float32Array(xv.length);
    for (let i = 0; i < xv.length; ++i) {
      const b = Math.floor(i / 64);
      xt[i] = Math.fround(Math.fround(xv[i] * diff.schedule.sqrtAlphasCumprod[ts[b]]) + Math.fround(noise[i] * diff.schedule.sqrtOneMinusAlphasCumprod[ts[b]]));
    }
    const run = (m: Denoiser) => noGrad(() => tidy(() => m.forward(fromArray(xt, [4, 1, 8, 8]), fromArray(ts, [4])))).dataSync() as Float32Array;
    const es = run(st), et = run(te);
    let mse = 0;
    for (let i = 0; i < es.length; ++i) mse += (es[i] - et[i]) ** 2;
    mse /= es.length;
    assert.ok(mse > 1e-8, `quantization must change the prediction (MSE ${mse})`);
    assert.ok(Math.abs(value - mse) <= 1e-5 * mse, `distill loss ${value}, measured ${mse}`);
    // w = 0: the diffusion loss itself, bit for bit; 0 < w < 1: the mix.
    const plain = noGrad(() => tidy(() => diff.trainingLoss(x, new Generator(5)).loss)).dataSync()[0];
    const w0 = noGrad(() => tidy(() => distillLoss(diff, { teacher: te, weight: 0 }, x, new Generator(5)).loss)).dataSync()[0];
    assert.equal(w0, plain);
    const mix = noGrad(() => tidy(() => distillLoss(diff, { teacher: te, weight: 0.25 }, x, new Generator(5)).loss)).dataSync()[0];
    assert.ok(Math.abs(mix - (0.25 * value + 0.75 * plain)) <= 1e-6 * mix);
    assert.throws(() => distillLoss(diff, { teacher: te, weight: 1.5 }, x, new Generator(5)), /distill weight must be a number in \[0, 1\]/);
    x.dispose();
    te.dispose();
    st.dispose();
  });

  for (const [label, cfg, quantKeys] of [
    ['TDQ', resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true }), ['act_quant.tdq.mlp.3.weight', 'act_quant.tdq.mlp.3.bias']],
    ['LSQ', resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: false }), ['act_quant.step']],
    ['PACT', resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: false, staticMethod: 'pact' }), ['act_quant.alpha']],
  ] as const) {
    it(`${label}: gradients reach the weights, the weight steps and the activation quantizer`, async () => {
      const te = await teacher(), st = await student(cfg);
      const diff = new PixelDiffusion(config.model, st);
      const x = x0();
      st.train();
      tidy(() => backward(distillLoss(diff, { teacher: te, weight: 1 }, x, new Generator(5)).loss));
      const params = new Map(st.namedParameters());
      const hasGrad = (k: string) => {
        const g = params.get(k)?.grad?.dataSync() as Float32Array | undefined;
        return !!g && g.some((v) => v !== 0);
      };
      for (const k of ['input_blocks.1.0.in_layers.2.weight', 'input_blocks.1.0.in_layers.2.weight_quant.step']) assert.ok(hasGrad(k), `${k}: no gradient`);
      // Activation quantizers: PACT's bound only learns from clipped inputs, so some quantizer (not every one) has a gradient.
      for (const q of quantKeys) {
        const keys = [...params.keys()].filter((k) => k.endsWith(`.${q}`));
        assert.ok(keys.length > 0, `no parameter *.${q}`);
        assert.ok(keys.some(hasGrad), `no *.${q} has a gradient`);
      }
      for (const [, p] of te.namedParameters()) assert.equal(p.grad ?? null, null, 'the teacher stays frozen');
      x.dispose();
      te.dispose();
      st.dispose();
    });
  }

  it('a distilled run stopped and resumed ends bit for bit where an uninterrupted one does', async () => {
    const cfg = resolveQuantConfig({ nBitW: 4, nBitA: 4, useDynamic: true });
    const hook = (calibrate: boolean) => {
      const prep = qatPrepare(cfg, { ...quickCalib(config), method: 'stats', tdqInit: 'constant', calibrate });
      return async (unet: Denoiser) => ({ ...(await prep(unet)), distill: { teacher: await teacher(), weight: 0.7 } });
    };
    const a = path.join(dir, 'straight'), b = path.join(dir, 'stopped');
    const r1 = await train({ config, outDir: a, initCheckpoint: fp, print: null, prepare: hook(true) });
    assert.equal(r1.step, 4);
    const r2 = await train({ config, outDir: b, initCheckpoint: fp, print: null, stopAtStep: 2, prepare: hook(true) });
    assert.equal(r2.step, 2);
    const r3 = await train({ config, outDir: b, resume: b, print: null, prepare: hook(false) });
    assert.equal(r3.step, 4);
    const A = await readSafetensors(r1.checkpoint), B = await readSafetensors(r3.checkpoint);
    assert.deepEqual([...A.tensors.keys()].sort(), [...B.tensors.keys()].sort());
    for (const [k, t] of A.tensors) {
      const u = B.tensors.get(k)!;
      assert.deepEqual(Buffer.from((await t.data() as Float32Array).buffer), Buffer.from((await u.data() as Float32Array).buffer), `${k} differs after resume`);
    }
    const losses = (d: string) => fs.readFileSync(path.join(d, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
    assert.deepEqual(losses(b), losses(a));
    assert.notEqual(losses(a)[0], losses(a)[3]);
    for (const t of [...A.tensors.values(), ...B.tensors.values()]) t.dispose();
  });
});
