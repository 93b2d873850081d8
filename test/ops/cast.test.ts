// cast float32 -> int8 / uint8 / int32: NaN -> 0, saturating at the type's
// range, truncating toward zero in between (native/core/saturate.h, shared by
// the CPU and CUDA kernels). The edges include 2^31, the float nearest
// INT32_MAX, which a plain C cast would convert with undefined behaviour.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { cast } from '../../src/tensor/ops/creation';
import { fromArray } from '../../src/tensor/tensor';

const edges = [NaN, Infinity, -Infinity, 2 ** 31, -(2 ** 31), 3e9, -3e9, 2147483520, -2147483520, 127.9, -128.7, 255.5, 256, -0.5, -1.99, 1.99, 0];

function reference(v: number, lo: number, hi: number): number {
  if (Number.isNaN(v)) return 0;
  if (v >= hi) return hi;
  if (v <= lo) return lo;
  return Math.trunc(v) + 0; // integers have no -0
}

describe('cast float32 -> integer types', () => {
  for (const [dtype, lo, hi] of [['int8', -128, 127], ['uint8', 0, 255], ['int32', -(2 ** 31), 2 ** 31 - 1]] as const) {
    it(`${dtype}: NaN -> 0, saturation, truncation toward zero`, () => {
      const x = fromArray(edges, [edges.length]);
      const y = cast(x, dtype);
      const got = Array.from(y.dataSync() as ArrayLike<number>);
      const want = edges.map((v) => reference(Math.fround(v), lo, hi));
      assert.deepEqual(got, want);
      x.dispose();
      y.dispose();
    });
  }
});
