import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { StepTable } from '../../src/quant/table';
import { stepTableLookup } from '../../src/tensor/ops/quant';
import { fromArray } from '../../src/tensor/tensor';

describe('StepTable lookup rule', () => {
  const values = Float32Array.from({ length: 10 }, (_, i) => 0.01 * (i + 1) ** 1.5);
  const table = new StepTable(values);

  it('integer timesteps return the stored entry bit for bit', () => {
    for (let k = 0; k < 10; ++k) assert.equal(table.at(k), values[k]);
    assert.deepEqual(Array.from(table.lookup([0, 9, 3, 3])), [values[0], values[9], values[3], values[3]]);
  });

  it('fractional timesteps (DPM-Solver) interpolate linearly between neighbours', () => {
    const t = 4.25;
    const want = Math.fround(values[4] + (values[5] - values[4]) * 0.25);
    assert.equal(table.at(t), want);
    const mid = table.at(6.5);
    assert.ok(mid > values[6] && mid < values[7]);
  });

  it('float round-off at the ends is tolerated; anything else outside [0, T-1] is an error', () => {
    assert.equal(table.at(-1e-9), values[0]);
    assert.equal(table.at(9 + 1e-9), values[9]);
    assert.throws(() => table.at(-0.5), /timestep -0.5 is outside \[0, 9\]/);
    assert.throws(() => table.at(10), RangeError);
    assert.throws(() => table.at(NaN), RangeError);
  });

  it('rejects entries that are not positive and finite', () => {
    assert.throws(() => new StepTable(Float32Array.of(0.1, 0)), /entry 1 is 0/);
    assert.throws(() => new StepTable(Float32Array.of(NaN)), RangeError);
    assert.throws(() => new StepTable(new Float32Array(0)), TypeError);
  });
});

describe('step_table_lookup (the native op) against StepTable', () => {
  it('gives every column at integer, fractional and end timesteps exactly as StepTable.at', async () => {
    const T = 50, Q = 7;
    const cols = Array.from({ length: Q }, (_, q) => Float32Array.from({ length: T }, (_, k) => 0.001 + 0.05 * Math.abs(Math.sin(0.3 * k + q)) + 1e-3 * q));
    const data = new Float32Array(T * Q);
    cols.forEach((c, q) => c.forEach((v, k) => (data[k * Q + q] = v)));
    const t = [0, 1, 49, 17.5, 0.125, 48.999, 23.3, 49 + 1e-7, -1e-7].map(Math.fround);
    const out = stepTableLookup(fromArray(data, [T, Q]), fromArray(t, [t.length]));
    assert.deepEqual(out.shape, [t.length, Q]);
    const got = (await out.data()) as Float32Array;
    t.forEach((tb, b) => cols.forEach((c, q) => assert.equal(got[b * Q + q], new StepTable(c).at(tb), `t = ${tb}, column ${q}`)));
  });

  it('names a timestep outside the table, and checks shapes before running', async () => {
    const table = fromArray(new Float32Array(20).fill(0.1), [10, 2]);
    await assert.rejects(stepTableLookup(table, fromArray([3, 8.5, 10], [3])).data(), /timestep 10 at position 2 of 't' is outside \[0, 9\]/);
    await assert.rejects(stepTableLookup(table, fromArray([NaN], [1])).data(), /position 0/);
    assert.throws(() => stepTableLookup(fromArray([1, 2], [2]), fromArray([0], [1])), /'table' must have shape \(T, Q\)/);
    assert.throws(() => stepTableLookup(table, fromArray([0, 1], [1, 2])), /'t' must have shape \(B\)/);
  });
});
