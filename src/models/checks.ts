// Numbers checked where they enter: a checkpoint whose weights hold NaN or
// Inf, or whose step tables are not positive, samples garbage without any
// error. These checks run on every tensor a checkpoint brings in (one
// engine-side probe for all float tensors; a tensor is read back only when the
// probe finds a problem) and on every stored quantizer step.
//
// Learned steps (LSQ 'step', PACT 'alpha', weight steps) at or below zero are
// not damage: QAT can move them there (one Adam step past a tiny calibrated
// step) and every forward clamps them to STEP_FLOOR, as training did. They are
// reported ('floored') but never refused; NaN/Inf in them is refused.
import { type Tensor, runOp1 } from '../tensor/tensor';

/** One bad number of a checkpoint. */
export interface NumberProblem {
  /** The tensor's key in the file. */
  key: string;
  /** Flat index of the first bad element, its value, and how many are bad. */
  index: number;
  value: number;
  count: number;
  /** 'non-finite' and 'step' (a step-table entry <= 0) are refused; 'floored' (a learned step <= 0, used as STEP_FLOOR) is reported only. */
  kind: 'non-finite' | 'step' | 'floored';
}

/** A checkpoint holds non-finite weights or non-positive / non-finite quantizer steps. */
export class CheckpointValueError extends Error {
  constructor(readonly file: string, readonly problems: NumberProblem[]) {
    const p = problems[0];
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more tensor${problems.length > 2 ? 's' : ''}: ${problems.slice(1, 6).map((q) => q.key).join(', ')}${problems.length > 6 ? ', ...' : ''})` : '';
    super(`${file}: ${describeProblem(p)}${more}; the checkpoint is damaged (load it with allowNonFinite / --allow-non-finite to inspect it)`);
    this.name = 'CheckpointValueError';
  }
}

export function describeProblem(p: NumberProblem): string {
  const what = p.kind === 'non-finite' ? 'tensor' : 'quantizer step';
  const cond = p.kind === 'step' ? 'is not positive and finite' : p.kind === 'floored' ? 'is not positive (used as the step floor 1e-8)' : 'is not finite';
  return `${what} '${p.key}' ${cond}: element ${p.index} is ${p.value}${p.count > 1 ? ` (${p.count} bad elements)` : ''}`;
}

/** Keys of stored step tables: every entry must be > 0 and finite. */
export function isTableKey(key: string): boolean {
  return /(^|\.)(act_quant|out_quant)\.step_table$/.test(key);
}

/** Keys of learned steps (LSQ step, PACT bound, weight steps): finite; <= 0 is floored in forward. */
export function isLearnedStepKey(key: string): boolean {
  return /(^|\.)(act_quant|out_quant|weight_quant)\.(step|alpha)$/.test(key);
}

const FLOAT = new Set(['float32', 'float16']);

function values(t: Tensor): Float32Array {
  if (t.dtype === 'float32') return t.dataSync() as Float32Array;
  const c = runOp1('cast', [t], { dtype: 'float32' });
  const v = c.dataSync() as Float32Array;
  c.dispose();
  return v;
}

function scan(key: string, t: Tensor, kind: NumberProblem['kind']): NumberProblem | null {
  const v = values(t);
  let index = -1, count = 0;
  for (let i = 0; i < v.length; ++i) {
    const bad = kind === 'non-finite' ? !Number.isFinite(v[i]) : !(v[i] > 0 && Number.isFinite(v[i]));
    if (bad && count++ === 0) index = i;
  }
  if (!count) return null;
  // A learned step with a NaN/Inf anywhere is refused as non-finite; only <= 0 alone is floored.
  if (kind === 'floored' && v.some((x) => !Number.isFinite(x))) return scan(key, t, 'non-finite');
  return { key, index, value: v[index], count, kind };
}

function probe(ts: Tensor[]): boolean {
  const s = runOp1('grad_norm_sq', ts);
  const v = (s.dataSync() as Float32Array)[0];
  s.dispose();
  return Number.isFinite(v);
}

/** Every bad number of `tensors`, in key order (blocking reads). */
export function findNumberProblems(tensors: Map<string, Tensor>): NumberProblem[] {
  const floats = [...tensors].filter(([, t]) => FLOAT.has(t.dtype) && t.size > 0);
  const out: NumberProblem[] = [];
  const seen = new Set<string>();
  for (const [k, t] of floats)
    if (isTableKey(k) || isLearnedStepKey(k)) {
      seen.add(k);
      const p = scan(k, t, isTableKey(k) ? 'step' : 'floored');
      if (p) out.push(p);
    }
  const rest = floats.filter(([k]) => !seen.has(k));
  const f32 = rest.filter(([, t]) => t.dtype === 'float32').map(([, t]) => t);
  if (rest.length > f32.length || (f32.length && !probe(f32)))
    for (const [k, t] of rest) {
      const p = scan(k, t, 'non-finite');
      if (p) out.push(p);
    }
  const order = new Map([...tensors.keys()].map((k, i) => [k, i]));
  return out.sort((a, b) => order.get(a.key)! - order.get(b.key)!);
}

/** The problems a load refuses (all but 'floored'). */
export function refused(problems: readonly NumberProblem[]): NumberProblem[] {
  return problems.filter((p) => p.kind !== 'floored');
}
