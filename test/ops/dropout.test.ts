import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { dropout } from '../../src/tensor/ops/dropout';
import { Generator } from '../../src/tensor/random';
import { fromArray, runOp1, type Tensor } from '../../src/tensor/tensor';
import { randomTensor } from '../helpers/assert';
import { atEveryLevel } from '../helpers/cpu_levels';

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

/**
 * Word 0 of Philox4x32-10 (Salmon et al.) of the 64-bit counter (words 2, 3
 * zero) under a 64-bit key: a plain JS reference, independent of the C++ one.
 */
function philoxWord0(counter: bigint, seed: bigint): number {
  const M32 = 0xffffffffn;
  let c0 = counter & M32, c1 = (counter >> 32n) & M32, c2 = 0n, c3 = 0n;
  let k0 = seed & M32, k1 = (seed >> 32n) & M32;
  for (let r = 0; r < 10; ++r) {
    const p0 = 0xd2511f53n * c0, p1 = 0xcd9e8d57n * c2;
    [c0, c1, c2, c3] = [(p1 >> 32n) ^ c1 ^ k0, p1 & M32, (p0 >> 32n) ^ c3 ^ k1, p0 & M32];
    k0 = (k0 + 0x9e3779b9n) & M32;
    k1 = (k1 + 0xbb67ae85n) & M32;
  }
  return Number(c0);
}

/** 1 where y kept x (x has no zeros), 0 where dropped. */
const maskOf = (y: Float32Array) => Uint8Array.from(y, (v) => (v !== 0 ? 1 : 0));

describe('dropout', () => {
  it('the same seed gives the same mask; the generator advances by numel', async () => {
    const x = randomTensor([4, 1000], 1).t;
    const g1 = new Generator(42), g2 = new Generator(42);
    const a = await f32(dropout(x, 0.5, g1, true));
    const b = await f32(dropout(x, 0.5, g2, true));
    assert.deepEqual(a, b);
    assert.equal(g1.offset, 4000);
    // The next draw uses fresh counters: a different mask.
    const c = maskOf(await f32(dropout(x, 0.5, g1, true)));
    assert.equal(g1.offset, 8000);
    assert.notDeepEqual(c, maskOf(a));
    // Another seed, another mask.
    assert.notDeepEqual(maskOf(await f32(dropout(x, 0.5, new Generator(43), true))), maskOf(a));
    // Restoring the state reproduces the second draw.
    const g3 = new Generator(42);
    g3.setState({ seed: 42, offset: 4000 });
    assert.deepEqual(maskOf(await f32(dropout(x, 0.5, g3, true))), c);
  });

  it('keeps about 1 - p of the elements and scales them by 1 / (1 - p)', async () => {
    const n = 200000;
    const x = randomTensor([n], 2);
    for (const p of [0.1, 0.3, 0.9]) {
      const y = await f32(dropout(x.t, p, new Generator(7), true));
      let kept = 0;
      let worst = 0;
      for (let i = 0; i < n; ++i) {
        if (y[i] === 0) continue;
        ++kept;
        const want = Math.fround(x.arr.data[i] * Math.fround(1 / (1 - p)));
        worst = Math.max(worst, Math.abs(y[i] - want) / Math.abs(want));
      }
      const rate = kept / n, sigma = Math.sqrt((p * (1 - p)) / n);
      assert.ok(Math.abs(rate - (1 - p)) < 5 * sigma, `p=${p}: keep rate ${rate} vs ${1 - p} (5 sigma = ${5 * sigma})`);
      assert.ok(worst <= 1e-7, `p=${p}: kept values off by ${worst} relative`);
    }
  });

  it('the gradient is gy * mask / (1 - p)', async () => {
    const p = 0.4;
    const x = randomTensor([3, 5, 7], 3);
    x.t.requiresGrad = true;
    const y = dropout(x.t, p, new Generator(5), true);
    const gy = randomTensor(y.shape, 4);
    backward(y, gy.t);
    const mask = maskOf(await f32(y));
    const scale = Math.fround(1 / (1 - p));
    const want = Float32Array.from(gy.arr.data, (g, i) => (mask[i] ? Math.fround(g * scale) : 0));
    assert.deepEqual(await f32(x.t.grad!), want);
  });

  it('p = 0 and training = false return x itself and draw nothing; p = 1 gives zeros', async () => {
    const x = randomTensor([10], 4).t;
    const g = new Generator(1);
    assert.equal(dropout(x, 0, g, true), x);
    assert.equal(dropout(x, 0.5, g, false), x);
    assert.equal(g.offset, 0);
    assert.deepEqual(Array.from(await f32(dropout(x, 1, g, true))), new Array(10).fill(0));
  });

  it('the mask does not depend on the thread count', async () => {
    const x = randomTensor([50000], 5).t;
    const b = native();
    const threads = b.info().threads;
    const out: Float32Array[] = [];
    try {
      for (const t of [1, 3]) {
        b.setThreads(t);
        out.push(await f32(dropout(x, 0.5, new Generator(9), true)));
      }
    } finally {
      b.setThreads(threads);
    }
    assert.deepEqual(out[0], out[1]);
  });

  it('the mask is Philox word 0 of (seed, offset + i) >= p at every CPU level, across a 2^32 counter carry', async () => {
    // Random123's known answer for counter 0, key 0 checks the JS reference itself.
    assert.equal(philoxWord0(0n, 0n), 0x6627e8d5);
    const n = 16 * 40 + 13; // full 16-lane blocks and a tail
    const x = randomTensor([n], 6);
    const p = 0.3, scale = Math.fround(1 / (1 - p));
    const cases: [number, number][] = [
      [0, 0],
      [123456789, 2 ** 32 - 100], // the low counter word wraps inside a block
      [2 ** 40 + 3, 3 * 2 ** 32 + 5],
    ];
    const gy = randomTensor([n], 7);
    await atEveryLevel(async (level) => {
      for (const [seed, offset] of cases) {
        const want = Float32Array.from(x.arr.data, (v, i) => {
          const u = Math.fround((philoxWord0(BigInt(offset) + BigInt(i), BigInt(seed)) >>> 8) / 16777216);
          return u >= Math.fround(p) ? Math.fround(v * scale) : 0;
        });
        const attrs = { p, seed, offset };
        assert.deepEqual(await f32(runOp1('dropout', [x.t], attrs)), want, `${level}: seed ${seed}, offset ${offset}`);
        const back = await f32(runOp1('dropout_backward', [gy.t], attrs));
        const wantBack = Float32Array.from(gy.arr.data, (g, i) => (want[i] !== 0 ? Math.fround(g * scale) : 0));
        assert.deepEqual(back, wantBack, `${level} backward: seed ${seed}, offset ${offset}`);
      }
    });
  });

  it('bad inputs throw the right error class naming the argument', () => {
    const x = fromArray([1, 2], [2]);
    const g = new Generator(0);
    assert.throws(() => dropout(x, 1.5, g, true), (e: Error) => e instanceof RangeError && /'p'/.test(e.message));
    assert.throws(() => dropout(x, NaN, g, true), (e: Error) => e instanceof RangeError && /'p'/.test(e.message));
    assert.throws(() => dropout(x, 0.5, {} as Generator, true), (e: Error) => e instanceof TypeError && /'gen'/.test(e.message));
    assert.throws(() => dropout(fromArray([1, 2], [2], 'int32'), 0.5, g, true), (e: Error) => e instanceof TypeError && /'x' must be float32/.test(e.message));
    assert.equal(g.offset, 0, 'a rejected call draws nothing');
    // The native ops check their attributes themselves.
    assert.throws(() => runOp1('dropout', [x], { p: 2, seed: 0 }), (e: Error) => e instanceof RangeError && /'p' must be in \[0, 1\]/.test(e.message));
    assert.throws(() => runOp1('dropout', [x], { p: 0.5, seed: -1 }), (e: Error) => e instanceof RangeError && /'seed'/.test(e.message));
    assert.throws(() => runOp1('dropout', [x], { p: 0.5, seed: 1, offset: 0.5 }), (e: Error) => e instanceof RangeError && /'offset'/.test(e.message));
    assert.throws(() => runOp1('dropout', [x], { p: 0.5 }), (e: Error) => e instanceof TypeError && /'seed'/.test(e.message));
    assert.throws(() => runOp1('dropout_backward', [fromArray([1], [1], 'int32')], { p: 0.5, seed: 1 }), (e: Error) => e instanceof TypeError && /'gy' must be float32/.test(e.message));
    assert.throws(() => g.nextOffset(-1), RangeError);
  });
});
