// Numerical comparisons. The main measure is the relative error in the 2-norm,
// ||actual - expected|| / max(||expected||, tiny): stated per test.
import assert from 'node:assert/strict';

import { Generator } from '../../src/tensor/random';
import { type Shape, type Tensor, fromArray, numel } from '../../src/tensor/tensor';

export function relError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, `length ${actual.length} != expected ${expected.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < actual.length; ++i) {
    const d = actual[i] - expected[i];
    num += d * d;
    den += expected[i] * expected[i];
  }
  if (!Number.isFinite(num)) return Infinity;
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

export function maxAbsError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < actual.length; ++i) m = Math.max(m, Math.abs(actual[i] - expected[i]));
  return m;
}

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, what = 'value'): void {
  const e = relError(actual, expected);
  assert.ok(e <= rtol, `${what}: relative error ${e.toExponential(3)} > ${rtol} (max abs error ${maxAbsError(actual, expected).toExponential(3)})`);
}

export function assertShape(t: { shape: Shape }, shape: Shape, what = 'shape'): void {
  assert.deepEqual([...t.shape], [...shape], what);
}

/** Random float32 data from a seeded JS-side generator (independent of the engine). */
export function randomData(shape: Shape, seed: number, scale = 1): Float32Array {
  const g = new Generator(seed);
  const out = new Float32Array(numel(shape));
  for (let i = 0; i < out.length; i += 2) {
    const u1 = 1 - g.randint(2 ** 30) / 2 ** 30, u2 = g.randint(2 ** 30) / 2 ** 30;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = scale * r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < out.length) out[i + 1] = scale * r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** A random tensor and its data, for sending the same values to the oracle. */
export function randomTensor(shape: Shape, seed: number, scale = 1): { t: Tensor; arr: { shape: number[]; data: Float32Array } } {
  const data = randomData(shape, seed, scale);
  return { t: fromArray(data, shape), arr: { shape: [...shape], data } };
}
