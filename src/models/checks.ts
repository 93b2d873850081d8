// Numbers checked where they enter: a checkpoint whose weights hold NaN or
// Inf, or whose quantizer steps are not positive and finite, samples garbage
// without any error. These checks run on every tensor a checkpoint brings in
// (one engine-side probe for all float tensors; a tensor is read back only
// when the probe finds a problem) and on every stored quantizer step.
import { type Tensor, runOp1 } from '../tensor/tensor';

/** One bad number of a checkpoint. */
export interface NumberProblem {
  /** The tensor's key in the file. */
  key: string;
  /** Flat index of the first bad element, its value, and how many are bad. */
  index: number;
  value: number;
  count: number;
  kind: 'non-finite' | 'step';
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
  const what = p.kind === 'step' ? 'quantizer step' : 'tensor';
  const cond = p.kind === 'step' ? 'is not positive and finite' : 'is not finite';
  return `${what} '${p.key}' ${cond}: element ${p.index} is ${p.value}${p.count > 1 ? ` (${p.count} bad elements)` : ''}`;
}

/** Keys whose values are quantizer step sizes (LSQ step, PACT bound, TDQ table, weight steps): each must be > 0 and finite. */
export function isStepKey(key: string): boolean {
  return /(^|\.)(act_quant|out_quant|weight_quant)\.(step|alpha|step_table)$/.test(key);
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
    const bad = kind === 'step' ? !(v[i] > 0 && Number.isFinite(v[i])) : !Number.isFinite(v[i]);
    if (bad && count++ === 0) index = i;
  }
  return count ? { key, index, value: v[index], count, kind } : null;
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
    if (isStepKey(k)) {
      seen.add(k);
      const p = scan(k, t, 'step');
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

/** Throws CheckpointValueError naming the first bad tensor of `file`. */
export function checkNumbers(file: string, tensors: Map<string, Tensor>): void {
  const problems = findNumberProblems(tensors);
  if (problems.length) throw new CheckpointValueError(file, problems);
}
