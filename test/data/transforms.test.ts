import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { centerBox, fitImage, padCenter, resampleBox } from '../../src/data/dataset';
import { randomData } from '../helpers/assert';

function close(a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-6): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; ++i) assert.ok(Math.abs(a[i] - b[i]) <= tol, `[${i}] ${a[i]} != ${b[i]}`);
}

describe('image transforms', () => {
  it('bilinear uses half-pixel centers (align_corners = false) and clamps at the border', () => {
    const out = new Float32Array(4);
    resampleBox([0, 1], 1, 1, 2, { y0: 0, x0: 0, h: 1, w: 2 }, 1, 4, 'bilinear', out);
    close(out, [0, 0.25, 0.75, 1]);
    // Upsampling 2x2 -> 3x3: the center is the mean of all four.
    const o2 = new Float32Array(9);
    resampleBox([0, 1, 2, 3], 1, 2, 2, { y0: 0, x0: 0, h: 2, w: 2 }, 3, 3, 'bilinear', o2);
    close([o2[4]], [1.5]);
  });

  it('area averages whole and fractional pixels', () => {
    const out = new Float32Array(2);
    resampleBox([1, 3, 5, 7], 1, 1, 4, { y0: 0, x0: 0, h: 1, w: 4 }, 1, 2, 'area', out);
    close(out, [2, 6]);
    // 3 -> 2: output 0 covers [0, 1.5): (x0 + 0.5 x1) / 1.5.
    resampleBox([3, 6, 9], 1, 1, 3, { y0: 0, x0: 0, h: 1, w: 3 }, 1, 2, 'area', out);
    close(out, [(3 + 0.5 * 6) / 1.5, (0.5 * 6 + 9) / 1.5]);
  });

  it('area resampling preserves the mean for any sizes', () => {
    const [c, h, w] = [2, 37, 23];
    const src = randomData([c, h, w], 5);
    const out = new Float32Array(c * 16 * 11);
    resampleBox(src, c, h, w, { y0: 0, x0: 0, h, w }, 16, 11, 'area', out);
    for (let ch = 0; ch < c; ++ch) {
      const m1 = src.subarray(ch * h * w, (ch + 1) * h * w).reduce((a, b) => a + b, 0) / (h * w);
      const m2 = out.subarray(ch * 176, (ch + 1) * 176).reduce((a, b) => a + b, 0) / 176;
      assert.ok(Math.abs(m1 - m2) < 1e-5, `channel ${ch}: ${m1} vs ${m2}`);
    }
  });

  it('pads centered with a fill value or the edge, and crops when smaller', () => {
    const src = [1, 2, 3, 4]; // 2 x 2
    const z = new Float32Array(16);
    padCenter(src, 1, 2, 2, 4, 4, 'zero', -1, z);
    close(z, [-1, -1, -1, -1, -1, 1, 2, -1, -1, 3, 4, -1, -1, -1, -1, -1]);
    const e = new Float32Array(16);
    padCenter(src, 1, 2, 2, 4, 4, 'edge', -1, e);
    close(e, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
    const c = new Float32Array(1);
    padCenter([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 3, 3, 1, 1, 'zero', -1, c);
    close(c, [5]);
  });

  it('finds the largest centered box of the target aspect', () => {
    assert.deepEqual(centerBox(100, 50, 32, 32), { y0: 25, x0: 0, h: 50, w: 50 });
    assert.deepEqual(centerBox(40, 80, 16, 16), { y0: 0, x0: 20, h: 40, w: 40 });
    assert.deepEqual(centerBox(30, 60, 8, 16), { y0: 0, x0: 0, h: 30, w: 60 });
  });

  it('fitImage: auto pads a smaller image and crops+resamples a larger one', () => {
    const small = randomData([1, 3, 3], 1);
    const a = new Float32Array(25), b = new Float32Array(25);
    fitImage(small, 1, 3, 3, 5, 5, {}, a);
    padCenter(small, 1, 3, 3, 5, 5, 'zero', -1, b);
    close(a, b);
    // 6 x 12 -> 2 x 2 with area: the center 6 x 6 box, averaged in 3 x 3 blocks.
    const big = Float32Array.from({ length: 72 }, (_, i) => i);
    const out = new Float32Array(4);
    fitImage(big, 1, 6, 12, 2, 2, { mode: 'auto', interpolation: 'area' }, out);
    const block = (y0: number, x0: number) => {
      let s = 0;
      for (let y = y0; y < y0 + 3; ++y) for (let x = x0; x < x0 + 3; ++x) s += big[y * 12 + x];
      return s / 9;
    };
    close(out, [block(0, 3), block(0, 6), block(3, 3), block(3, 6)], 1e-4);
    // resize ignores the aspect ratio: the 6 x 12 image becomes 2 x 2 blocks of 3 x 6.
    fitImage(big, 1, 6, 12, 2, 2, { mode: 'resize', interpolation: 'area' }, out);
    let s = 0;
    for (let y = 0; y < 3; ++y) for (let x = 0; x < 6; ++x) s += big[y * 12 + x];
    close([out[0]], [s / 18], 1e-4);
  });

  it('writes at an offset without touching the rest of the output', () => {
    const out = new Float32Array(10).fill(7);
    fitImage([0.5, -0.5, 0.25, 0], 1, 2, 2, 2, 2, {}, out, 3);
    close(out, [7, 7, 7, 0.5, -0.5, 0.25, 0, 7, 7, 7]);
  });
});
