import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { StepTable } from '../../src/quant/table';

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
