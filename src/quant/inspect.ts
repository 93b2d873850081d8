// Reads the quantizers of a quantized state dict without building the UNet:
// what `tdq-native inspect` prints and plots. TDQ curves come from the stored
// table when there is one, else from evaluating the stored MLP weights.
import { noGrad } from '../tensor/autograd';
import { tidy } from '../tensor/scope';
import { Generator } from '../tensor/random';
import type { Tensor } from '../tensor/tensor';
import { type QuantConfig, levels, quantConfigFromJSON } from './config';
import type { ActRange } from './quantizer';
import { TdqModule } from './tdq';

export interface ActQuantizerInfo {
  name: string;
  kind: 'lsq' | 'pact' | 'tdq';
  bits: number;
  range: ActRange;
  /** LSQ step, or PACT alpha / qmax. */
  staticStep?: number;
  /** TDQ steps at t = 0..T-1, and where they came from. */
  curve?: { t: Float64Array; step: Float32Array; source: 'table' | 'mlp' };
  /** Calibration statistics, when the checkpoint has them. */
  calib?: { t: number[]; min: number[]; max: number[]; step: number[] };
}

export interface QuantizedCheckpointInfo {
  config: QuantConfig;
  timesteps: number;
  act: ActQuantizerInfo[];
  weights: { name: string; channels: number; minStep: number; maxStep: number }[];
}

export class NotQuantizedError extends Error {
  constructor(what: string) {
    super(`${what} is not a quantized checkpoint: it has no 'quant' metadata and no quantizer tensors (make one with 'tdq-native calibrate' or 'tdq-native train --n-bit-w ... --n-bit-a ...')`);
    this.name = 'NotQuantizedError';
  }
}

const ACT_KEY = /^(.*\.(?:act_quant|out_quant))\.(.+)$/;
const W_KEY = /^(.*\.weight_quant)\.step$/;

const values = (t: Tensor) => Array.from(t.dataSync() as Float32Array);

/**
 * The quantizers of a state dict (keys as QuantizedModel.stateDict) with the
 * checkpoint metadata (keys 'quant', 'quant_timesteps'). Blocking reads.
 */
export function describeQuantized(tensors: Map<string, Tensor>, metadata: Record<string, string>, what = 'the checkpoint'): QuantizedCheckpointInfo {
  const hasQuantKeys = [...tensors.keys()].some((k) => ACT_KEY.test(k) || W_KEY.test(k));
  if (!metadata.quant && !hasQuantKeys) throw new NotQuantizedError(what);
  if (!metadata.quant) throw new Error(`${what} has quantizer tensors but no 'quant' metadata (the quantization config); it cannot be read`);
  const config = quantConfigFromJSON(metadata.quant);
  const byQ = new Map<string, Map<string, Tensor>>();
  for (const [k, t] of tensors) {
    const m = ACT_KEY.exec(k);
    if (!m) continue;
    if (!byQ.has(m[1])) byQ.set(m[1], new Map());
    byQ.get(m[1])!.set(m[2], t);
  }
  let T = Number(metadata.quant_timesteps);
  if (!Number.isInteger(T) || T < 1) {
    const tbl = [...byQ.values()].find((m) => m.has('step_table'))?.get('step_table');
    if (!tbl) throw new Error(`${what}: metadata 'quant_timesteps' is missing or invalid and there is no step table to take T from`);
    T = tbl.shape[0];
  }
  const ts = Float64Array.from({ length: T }, (_, i) => i);
  const act: ActQuantizerInfo[] = [];
  for (const [name, parts] of byQ) {
    const signed = parts.get('signed'), zp = parts.get('zero_point');
    if (!signed || !zp) throw new Error(`${what}: quantizer '${name}' lacks its 'signed' / 'zero_point' tensors`);
    const range: ActRange = { signed: values(signed)[0] === 1, zeroPoint: values(zp)[0] };
    const info: ActQuantizerInfo = { name, kind: 'lsq', bits: config.nBitA, range };
    if (parts.has('step')) info.staticStep = values(parts.get('step')!)[0];
    else if (parts.has('alpha')) {
      info.kind = 'pact';
      info.staticStep = values(parts.get('alpha')!)[0] / levels(config.nBitA, range.signed).qmax;
    } else if ([...parts.keys()].some((k) => k.startsWith('tdq.'))) {
      info.kind = 'tdq';
      const table = parts.get('step_table');
      if (table) info.curve = { t: ts, step: Float32Array.from(table.dataSync() as Float32Array), source: 'table' };
      else {
        const mod = new TdqModule(config.tdq, new Generator(0));
        const sd = new Map([...parts].filter(([k]) => k.startsWith('tdq.')).map(([k, t]) => [k.slice(4), t] as [string, Tensor]));
        try {
          mod.loadStateDict(sd);
          mod.eval();
          const s = noGrad(() => tidy(() => mod.forward(mod.encode(ts))));
          info.curve = { t: ts, step: Float32Array.from(s.dataSync() as Float32Array), source: 'mlp' };
          s.dispose();
        } finally {
          mod.dispose();
        }
      }
    } else throw new Error(`${what}: quantizer '${name}' has neither a step, an alpha nor a TDQ module`);
    if (parts.has('calib_t'))
      info.calib = { t: values(parts.get('calib_t')!), min: values(parts.get('calib_min')!), max: values(parts.get('calib_max')!), step: values(parts.get('calib_step')!) };
    act.push(info);
  }
  const weights: QuantizedCheckpointInfo['weights'] = [];
  for (const [k, t] of tensors) {
    const m = W_KEY.exec(k);
    if (!m) continue;
    const v = values(t);
    weights.push({ name: m[1], channels: v.length, minStep: Math.min(...v), maxStep: Math.max(...v) });
  }
  return { config, timesteps: T, act, weights };
}
