import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { sample, timestepValues } from '../../src/diffusion/samplers/index';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { Adam } from '../../src/optim/adam';
import { calibrate, calibrateWithReport } from '../../src/quant/calibrate';
import { QuantConfigError, quantConfigFromJSON, resolveQuantConfig } from '../../src/quant/config';
import { PAPER_KEEP_FP, QuantizedModel, isQuantKey, quantizeModel } from '../../src/quant/quantize_model';
import { backward, noGrad } from '../../src/tensor/autograd';
import { add, detach, mean, mul, square, sub } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { randomData, relError } from '../helpers/assert';
import { SCHEDULE, tinyUNet } from './helpers';

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const B = 4, SHAPE = [B, 1, 8, 8];
const T = 1000;

/** Runs model(x, t) at a few timesteps on fixed inputs; returns the concatenated outputs. */
async function outputsAt(m: QuantizedModel, ts: number[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [i, t] of ts.entries()) {
    const x = fromArray(randomData(SHAPE, 50 + i), SHAPE);
    const tv = new Array(B).fill(t);
    out.push(await f32(noGrad(() => tidy(() => m.forward(x, fromArray(tv, [B]))))));
    x.dispose();
  }
  return out;
}

function cat(xs: Float32Array[]): Float32Array {
  const out = new Float32Array(xs.reduce((a, x) => a + x.length, 0));
  let o = 0;
  for (const x of xs) {
    out.set(x, o);
    o += x.length;
  }
  return out;
}

describe('model surgery', () => {
  it("quantizes every conv/linear except the paper's full-precision layers; keys are the float keys plus the quantizers'", () => {
    const unet = tinyUNet();
    const floatKeys = [...unet.stateDict().keys()];
    const qm = quantizeModel(unet, resolveQuantConfig({ nBitW: 4, nBitA: 8 }), { timesteps: T, gen: new Generator(0) });
    assert.deepEqual(qm.fpLayers.sort(), ['input_blocks.0.0', 'input_blocks.1.0.emb_layers.1', 'input_blocks.3.0.emb_layers.1', 'middle_block.0.emb_layers.1',
      'middle_block.2.emb_layers.1', 'out.2', 'output_blocks.0.0.emb_layers.1', 'output_blocks.1.0.emb_layers.1', 'output_blocks.2.0.emb_layers.1',
      'output_blocks.3.0.emb_layers.1', 'time_embed.0', 'time_embed.2'].sort());
    const q = [...qm.layers.keys()];
    for (const name of ['input_blocks.1.0.in_layers.2', 'input_blocks.1.0.out_layers.3', 'input_blocks.2.0.op', 'input_blocks.3.0.skip_connection',
      'input_blocks.3.1.qkv', 'input_blocks.3.1.proj_out', 'output_blocks.1.2.conv']) assert.ok(q.includes(name), `${name} is quantized`);
    const keys = [...qm.stateDict().keys()];
    assert.deepEqual(keys.filter((k) => !isQuantKey(k)), floatKeys, 'float keys unchanged, in order');
    assert.ok(keys.includes('input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.0.weight'));
    assert.ok(keys.includes('input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.3.bias'));
    assert.ok(keys.includes('input_blocks.1.0.in_layers.2.weight_quant.step'));
    assert.ok(keys.includes('input_blocks.1.0.in_layers.2.act_quant.signed'));
    assert.ok(!keys.some((k) => k.startsWith('time_embed.0.') && isQuantKey(k)));
    const all = qm.namedParameters().map(([n]) => n);
    assert.deepEqual([...qm.floatParameters().map(([n]) => n), ...qm.quantParameters().map(([n]) => n)].sort(), [...all].sort());
    assert.deepEqual(qm.floatParameters().map(([n]) => n), unet.namedParameters().filter(([n]) => !isQuantKey(n)).map(([n]) => n));
    assert.equal(qm.actQuantizers().length, q.length);
    qm.dispose();
  });

  it('static LSQ has one step per activation quantizer; quantizeAttention adds q/k/v output quantizers', () => {
    const qm = quantizeModel(tinyUNet(), resolveQuantConfig({ useDynamic: false, quantizeAttention: true }), { timesteps: T, gen: new Generator(0) });
    const keys = [...qm.stateDict().keys()];
    assert.ok(keys.includes('input_blocks.1.0.in_layers.2.act_quant.step'));
    assert.ok(!keys.some((k) => k.includes('.tdq.')));
    assert.ok(keys.includes('input_blocks.3.1.qkv.out_quant.step'));
    assert.ok(keys.includes('middle_block.1.qkv.out_quant.step'));
    assert.ok(!keys.some((k) => k.includes('proj_out.out_quant')));
    qm.dispose();
  });

  it('bad input gives clear errors', () => {
    assert.throws(() => resolveQuantConfig({ nBitW: 9 }), (e: Error) => e instanceof QuantConfigError && e instanceof RangeError && /nBitW must be an integer from 2 to 8, got 9/.test(e.message));
    assert.throws(() => resolveQuantConfig({ nBitA: 1 }), /nBitA must be an integer from 2 to 8, got 1/);
    assert.throws(() => resolveQuantConfig({ nBitA: 4.5 }), /nBitA/);
    assert.throws(() => resolveQuantConfig({ nbitw: 4 } as never), /unknown key 'nbitw'/);
    assert.throws(() => resolveQuantConfig({ tdq: { encDim: 7 } }), /tdq.encDim must be even/);
    assert.throws(() => quantConfigFromJSON('{'), /not valid JSON/);
    const unet = tinyUNet();
    assert.throws(() => quantizeModel(unet, resolveQuantConfig({ keepFp: ['out.2', 'no_such.layer', 'input_blocks.*.qkvv'] }), { timesteps: T, gen: new Generator(0) }),
      (e: Error) => e instanceof RangeError && /keepFp names 'no_such.layer', 'input_blocks.\*.qkvv' match no conv\/linear layer/.test(e.message) && /time_embed.0/.test(e.message));
    assert.throws(() => quantizeModel(unet, resolveQuantConfig({}), { timesteps: 0, gen: new Generator(0) }), /timesteps must be a positive integer/);
    const qm = quantizeModel(unet, resolveQuantConfig({ keepFp: ['*.qkv', 'out.2'] }), { timesteps: T, gen: new Generator(0) });
    assert.ok(qm.fpLayers.includes('middle_block.1.qkv') && qm.fpLayers.includes('out.2') && !qm.fpLayers.includes('input_blocks.0.0'));
    assert.throws(() => quantizeModel(unet, resolveQuantConfig({}), { timesteps: T, gen: new Generator(0) }), /already quantized/);
    const x = fromArray(new Float32Array(64 * B), SHAPE);
    assert.throws(() => qm.forward(x, fromArray([1, 2], [2])), /t must have shape \[4\]/);
    assert.throws(() => qm.useTable(true), /table has not been built/);
    assert.ok(PAPER_KEEP_FP.includes('out.2'));
    qm.dispose();
  });
});

describe('calibrated quantized model', () => {
  it('W8A8: noise predictions along a DDIM trajectory stay within 4% (TDQ) / 6% (static LSQ) of the float model (relative L2), TDQ closer', async () => {
    const errors: number[] = [];
    for (const useDynamic of [true, false]) {
      const qm = await calibrate(tinyUNet(), resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic }), { schedule: SCHEDULE, steps: 8, nSamples: 2, seed: 1, method: 'mse', fitIters: 300 });
      // The float model's own trajectory from another seed than calibration's.
      qm.setQuantEnabled(false);
      const xs: Float32Array[] = [], ts: number[] = [], ref: Float32Array[] = [];
      const x0 = await sample((x, t) => {
        const e = qm.forward(x, t);
        xs.push(Float32Array.from(noGrad(() => detach(x)).dataSync() as Float32Array));
        ts.push(timestepValues(t)[0]);
        ref.push(Float32Array.from(e.dataSync() as Float32Array));
        return e;
      }, { sampler: 'ddim', steps: 8, schedule: SCHEDULE, shape: SHAPE, seed: 77 });
      x0.dispose();
      qm.setQuantEnabled(true);
      const got: Float32Array[] = [];
      for (const [k, t] of ts.entries()) {
        const tv = new Array(B).fill(t);
        got.push(await f32(noGrad(() => tidy(() => qm.forward(fromArray(xs[k], SHAPE), fromArray(tv, [B]))))));
      }
      const e = relError(cat(got), cat(ref));
      errors.push(e);
      // Measured 0.027 (TDQ) and 0.042 (LSQ): this random model's activation
      // ranges change 10x along the trajectory, which a static step must span.
      assert.ok(e < (useDynamic ? 0.04 : 0.06), `${useDynamic ? 'TDQ' : 'LSQ'} W8A8: relative L2 error ${e}`);
      qm.setQuantEnabled(false);
      const again = await f32(noGrad(() => tidy(() => qm.forward(fromArray(xs[3], SHAPE), fromArray(new Array(B).fill(ts[3]), [B])))));
      assert.deepEqual(Array.from(again), Array.from(ref[3]), 'quantization off gives the float model exactly');
      qm.dispose();
    }
    assert.ok(errors[0] < errors[1], `TDQ ${errors[0]} vs static ${errors[1]}`);
  });

  it('sampling from the TDQ table equals sampling through the MLPs, bit for bit (DDIM, 12 steps)', async () => {
    const qm = await calibrate(tinyUNet(3), resolveQuantConfig({ nBitW: 4, nBitA: 4 }), { schedule: SCHEDULE, steps: 6, nSamples: 2, seed: 2, method: 'mse', fitIters: 200 });
    qm.buildTable();
    const run = async () => {
      const x = await sample((x, t) => qm.forward(x, t), { sampler: 'ddim', steps: 12, schedule: SCHEDULE, shape: SHAPE, seed: 9 });
      const v = await f32(x);
      x.dispose();
      return v;
    };
    qm.useTable(false);
    const viaMlp = await run();
    qm.useTable(true);
    const viaTable = await run();
    assert.ok(viaMlp.some((v) => v !== 0));
    assert.deepEqual(Array.from(viaTable), Array.from(viaMlp));
    // And directly: every table entry is the MLP's output for a batch at that timestep.
    const q = qm.actQuantizers()[5];
    for (const t of [0, 1, 500, 999]) {
      qm.ctx.begin(fromArray([t, t, t], [3]));
      qm.ctx.useTable = false;
      const s = await f32(q.stepTensor());
      qm.ctx.end();
      assert.deepEqual(Array.from(s), [q.table!.at(t), q.table!.at(t), q.table!.at(t)], `t = ${t}`);
    }
    qm.dispose();
  });

  it('the table is looked up on the engine: t is never read back, at integer and fractional timesteps', async () => {
    const qm = await calibrate(tinyUNet(4), resolveQuantConfig({ nBitW: 8, nBitA: 4 }), { schedule: SCHEDULE, steps: 4, nSamples: 1, seed: 5, method: 'minmax', fitIters: 100 });
    qm.buildTable();
    qm.useTable(true);
    const x = fromArray(randomData(SHAPE, 17), SHAPE);
    const sealed = (v: number[]) => {
      const t = fromArray(v, [B]);
      const no = () => {
        throw new Error('t was read back to JS');
      };
      Object.assign(t, { dataSync: no, data: no });
      return t;
    };
    for (const tv of [[0, 3, 500, 999], [0.5, 2.25, 998.75, 10.125]]) {
      const viaTable = await f32(noGrad(() => tidy(() => qm.forward(x, sealed(tv)))));
      // The reference: every quantizer's step from its StepTable (JS), at the float32 timesteps.
      for (const q of qm.actQuantizers()) q.stepTensor = () => fromArray(tv.map((t) => q.table!.at(Math.fround(t))), [B]);
      const viaJs = await f32(noGrad(() => tidy(() => qm.forward(x, fromArray(tv, [B])))));
      for (const q of qm.actQuantizers()) delete (q as { stepTensor?: unknown }).stepTensor;
      assert.deepEqual(Array.from(viaTable), Array.from(viaJs), `t = ${tv}`);
    }
    await assert.rejects(f32(noGrad(() => tidy(() => qm.forward(x, fromArray([0, 1, 2, 1000], [B]))))), /timestep 1000 at position 3 of 't' is outside \[0, 999\]/);
    qm.dispose();
  });

  it('checkpoint round trip (safetensors with metadata) restores outputs bit for bit', async () => {
    const cfg = resolveQuantConfig({ nBitW: 4, nBitA: 6 });
    const qm = await calibrate(tinyUNet(5), cfg, { schedule: SCHEDULE, steps: 4, nSamples: 1, seed: 3, method: 'minmax', fitIters: 100 });
    qm.buildTable();
    qm.useTable(true);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-quant-')), 'q.safetensors');
    await writeSafetensors(file, qm.stateDict(), qm.checkpointMetadata());
    const before = cat(await outputsAt(qm, [3, 700]));
    const { tensors, metadata } = await readSafetensors(file);
    const cfg2 = quantConfigFromJSON(metadata.quant);
    assert.deepEqual(cfg2, cfg);
    assert.equal(metadata.quant_timesteps, '1000');
    const qm2 = quantizeModel(tinyUNet(99), cfg2, { timesteps: Number(metadata.quant_timesteps), gen: new Generator(42) });
    qm2.loadStateDict(tensors);
    assert.ok(qm2.hasTable);
    qm2.useTable(true);
    const q1 = qm.actQuantizers(), q2 = qm2.actQuantizers();
    q1.forEach((q, i) => assert.deepEqual(q2[i].range, q.range, q.name));
    assert.ok(q1.some((q) => !q.range.signed), 'some inputs are unsigned (after SiLU)');
    const after = cat(await outputsAt(qm2, [3, 700]));
    assert.deepEqual(Array.from(after), Array.from(before));
    // The MLP path too (the table is not needed to reproduce the model).
    qm2.useTable(false);
    qm.useTable(false);
    assert.deepEqual(Array.from(cat(await outputsAt(qm2, [3, 700]))), Array.from(cat(await outputsAt(qm, [3, 700]))));
    for (const t of tensors.values()) t.dispose();
    qm.dispose();
    qm2.dispose();
    fs.rmSync(path.dirname(file), { recursive: true });
  });

  it('a short QAT run (W4A4 TDQ, per-sample timesteps) lowers the loss and trains the TDQ MLPs', async () => {
    const { model: qm, report } = await calibrateWithReport(tinyUNet(7), resolveQuantConfig({ nBitW: 4, nBitA: 4 }), { schedule: SCHEDULE, steps: 5, nSamples: 2, seed: 4, method: 'mse', fitIters: 200 });
    assert.ok(report.quantizers.every((q) => q.fitRmsLog !== undefined && q.fitRmsLog < 0.2), 'TDQ fitted to the calibrated steps');
    qm.train();
    const opt = new Adam([{ params: qm.floatParameters(), lr: 1e-3 }, { params: qm.quantParameters(), lr: 1e-4, name: 'quant' }]);
    const gen = new Generator(5);
    const x0 = fromArray(randomData(SHAPE, 60), SHAPE), noise = fromArray(randomData(SHAPE, 61), SHAPE);
    const tdqW = qm.actQuantizers()[3].tdq!.mlp.layers[0].weight;
    const w0 = Float32Array.from(tdqW.dataSync() as Float32Array);
    const losses: number[] = [];
    for (let step = 0; step < 30; ++step) {
      const tv = Array.from({ length: B }, () => gen.randint(T));
      const loss = tidy(() => {
        // x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, with a linear schedule's abar
        const ab = tv.map((t) => Math.exp(-10 * (t / T)));
        const a = fromArray(ab.map(Math.sqrt), [B, 1, 1, 1]), s = fromArray(ab.map((v) => Math.sqrt(1 - v)), [B, 1, 1, 1]);
        const x = add(mul(x0, a), mul(noise, s));
        const eps = qm.forward(x, fromArray(tv, [B]));
        const l = mean(square(sub(eps, noise)));
        backward(l);
        return l;
      });
      losses.push((await f32(loss))[0]);
      loss.dispose();
      opt.step();
      qm.zeroGrad();
    }
    const first = losses.slice(0, 5).reduce((a, b) => a + b) / 5, last = losses.slice(-5).reduce((a, b) => a + b) / 5;
    assert.ok(last < 0.9 * first, `loss ${first} -> ${last}`);
    const w1 = tdqW.dataSync() as Float32Array;
    assert.ok(w1.some((v, i) => v !== w0[i]), 'the TDQ MLP weights were updated');
    opt.dispose();
    qm.dispose();
  });
});
