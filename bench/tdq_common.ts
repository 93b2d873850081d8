// What the TDQ benchmarks share (tdq_table.ts, tdq_ptq_lab.ts): the
// full-precision model, its DDIM reference trajectories, and the
// teacher-forced noise error of a quantized model along them.
import type { Config } from '../src/config';
import { sample, timestepValues } from '../src/diffusion/samplers/index';
import type { NoiseSchedule } from '../src/diffusion/schedule';
import { scheduleFromConfig, type Denoiser } from '../src/models/diffusion';
import { loadModel } from '../src/models/load';
import type { CalibrationReport } from '../src/quant/calibrate';
import type { QuantizedModel } from '../src/quant/quantize_model';
import { denseLogSteps } from '../src/quant/step_search';
import { StepTable } from '../src/quant/table';
import { noGrad } from '../src/tensor/autograd';
import { detach } from '../src/tensor/ops/elementwise';
import { keep, tidy } from '../src/tensor/scope';
import { type Tensor, fromArray } from '../src/tensor/tensor';

export interface FpModel {
  file: string;
  config: Config;
  schedule: NoiseSchedule;
  shape: number[];
}

/** The full-precision model's file and config (checked by loading it once). */
export async function loadFp(file: string): Promise<FpModel> {
  const m = await loadModel(file, { expect: 'float' });
  m.dispose();
  const p = m.config.model.params;
  return { file, config: m.config, schedule: scheduleFromConfig(p), shape: [p.channels, p.image_size, p.image_size] };
}

/** A fresh copy of the FP UNet (EMA weights when there are), owned by the caller. */
export async function freshUNet(fp: FpModel): Promise<Denoiser> {
  return (await loadModel(fp.file, { config: fp.config, expect: 'float' })).model;
}

/** The FP reference of one seed: the trajectory's inputs and noise predictions per step (first epsSamples samples), and the samples. */
export interface Reference {
  xs: Float32Array[];
  ts: number[];
  eps: Float32Array[];
  x0: Float32Array;
  /** Samples kept in xs / eps. */
  n: number;
}

export async function reference(fp: Denoiser, m: FpModel, seed: number, o: { steps: number; nSamples: number; epsSamples: number }): Promise<Reference> {
  const xs: Tensor[] = [], eps: Tensor[] = [], ts: number[] = [];
  const out = await sample((x, t) => {
    const e = fp.forward(x, t);
    xs.push(keep(detach(x)));
    eps.push(keep(detach(e)));
    ts.push(timestepValues(t)[0]); // known to the sampler: no blocking read
    return e;
  }, { sampler: 'ddim', steps: o.steps, schedule: m.schedule, shape: [o.nSamples, ...m.shape], seed, clipDenoised: true });
  // eps-MSE is measured on the first epsSamples samples only: teacher forcing
  // costs as much as sampling, and the mean over steps and pixels settles fast.
  const n = Math.min(o.nSamples, o.epsSamples);
  const keepN = n * m.shape.reduce((p, d) => p * d, 1);
  const first = (t: Tensor) => Float32Array.from((t.dataSync() as Float32Array).subarray(0, keepN));
  const r: Reference = { xs: xs.map(first), ts, eps: eps.map(first), x0: Float32Array.from(out.dataSync() as Float32Array), n };
  for (const t of [...xs, ...eps, out]) t.dispose();
  return r;
}

export function mse(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; ++i) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}

export const mean = (v: number[]): number => v.reduce((s, x) => s + x, 0) / v.length;

/**
 * Teacher forcing: the quantized model's noise prediction at every input of
 * the FP trajectory, against the FP prediction; the MSE of each step.
 */
export function epsMsePerStep(qm: QuantizedModel, r: Reference, m: FpModel): number[] {
  const shape = [r.n, ...m.shape];
  return r.xs.map((x, k) => {
    const tv = new Array(r.n).fill(r.ts[k]);
    const e = noGrad(() => tidy(() => qm.forward(fromArray(x, shape), fromArray(tv, [r.n]))));
    const v = mse(e.dataSync() as Float32Array, r.eps[k]);
    e.dispose();
    return v;
  });
}

/**
 * Every quantizer's table set straight from its calibrated per-timestep
 * steps (log-linear between calibration timesteps, as the TDQ fit's
 * targets), no MLP in between: what a perfect fit would give.
 */
export function tableFromCalibration(qm: QuantizedModel, r: CalibrationReport): void {
  const byName = new Map(r.quantizers.map((q) => [q.name, q]));
  for (const q of qm.actQuantizers()) {
    const c = byName.get(q.name);
    if (!c) throw new Error(`no calibration for ${q.name}`);
    q.table = new StepTable(Float32Array.from(denseLogSteps({ t: c.t, step: c.steps }, qm.timesteps), Math.exp));
  }
}
