import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import * as E from '../../src/tensor/ops/elementwise';
import { tidy } from '../../src/tensor/scope';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
const RTOL = 1e-5; // float32 engine vs float64 PyTorch

describe('elementwise ops against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const cases: [string, number[], number[]][] = [
    ['same shape', [2, 3, 4], [2, 3, 4]],
    ['row broadcast', [4, 5], [5]],
    ['channel broadcast', [2, 3, 4, 4], [1, 3, 1, 1]],
    ['per-sample', [3, 2, 2, 2], [3, 1, 1, 1]],
    ['both broadcast', [3, 1, 5], [1, 4, 1]],
    ['scalar', [2, 7], []],
  ];
  for (const op of ['add', 'sub', 'mul', 'div'] as const) {
    for (const [name, sa, sb] of cases) {
      it(`${op} (${name}) forward and backward`, async () => {
        const a = randomTensor(sa, 1);
        const b = randomTensor(sb, 2);
        if (op === 'div') for (let i = 0; i < b.arr.data.length; ++i) b.arr.data[i] = 0.5 + Math.abs(b.arr.data[i]);
        const bt = op === 'div' ? fromArray(b.arr.data, sb) : b.t;
        a.t.requiresGrad = true;
        bt.requiresGrad = true;
        const y = E[op](a.t, bt);
        const gy = randomTensor(y.shape, 3);
        backward(y, gy.t);
        const ref = await oracle.call(op, { a: a.arr, b: b.arr }, {}, { wrt: ['a', 'b'], gradOutputs: [gy.arr] });
        assertClose((await y.data()) as Float32Array, ref.outputs[0].data as Float32Array, RTOL, 'forward');
        assertClose((await a.t.grad!.data()) as Float32Array, ref.grads.a.data as Float32Array, RTOL, 'grad a');
        assertClose((await bt.grad!.data()) as Float32Array, ref.grads.b.data as Float32Array, RTOL, 'grad b');
      });
    }
  }
});

describe('reductions, unary ops and autograd plumbing', () => {
  it('sum/mean over dims match a JS reference, with gradients', async () => {
    const x = randomTensor([2, 3, 4], 5);
    const s = E.sum(x.t, [0, 2]);
    const ref = [0, 0, 0];
    x.arr.data.forEach((v, i) => (ref[Math.floor(i / 4) % 3] += v));
    assertClose((await s.data()) as Float32Array, ref, 1e-6, 'sum');
    x.t.requiresGrad = true;
    const l = E.mean(E.square(x.t));
    backward(l);
    const g = (await x.t.grad!.data()) as Float32Array;
    assertClose(g, Array.from(x.arr.data, (v) => (2 * v) / 24), 1e-6, 'grad of mean(x^2)');
  });

  it('broadcasting binary ops and broadcastTo are exact against a JS reference (merged dims, size-1 dims, strided inners)', async () => {
    // Pairs whose dims merge in several ways: channel / per-sample / row
    // broadcasts, both sides broadcast, broadcasts in the middle, size-1
    // output dims between others, and a broadcast innermost dim.
    const pairs: [number[], number[]][] = [
      [[2, 3, 4, 5], [1, 3, 1, 1]],
      [[1, 3, 1, 1], [2, 3, 4, 5]],
      [[2, 3, 4, 5], [2, 3, 1, 1]],
      [[2, 1, 4, 1], [1, 3, 1, 5]],
      [[2, 3, 1, 5], [2, 1, 4, 5]],
      [[3, 1], [1, 4]],
      [[1, 3, 1, 4], [3, 1, 4]],
      [[2, 3, 4], [2, 3, 1]],
      [[5], [2, 3, 5]],
      [[1, 1, 7], [1, 1, 1]],
      [[2, 1, 3, 1, 2], [1, 4, 3, 5, 1]],
    ];
    const ops: [string, (a: Tensor, b: Tensor) => Tensor, (x: number, y: number) => number][] = [
      ['add', E.add, (x, y) => x + y],
      ['sub', E.sub, (x, y) => x - y],
      ['mul', E.mul, (x, y) => x * y],
      ['div', E.div, (x, y) => x / y],
    ];
    // Element of `shape` (right-aligned against out) at output index idx.
    const at = (data: Float32Array, shape: number[], out: number[], idx: number[]) => {
      let off = 0;
      shape.forEach((d, i) => (off = off * d + (d === 1 ? 0 : idx[i + out.length - shape.length])));
      return data[off];
    };
    const reference = (xa: Float32Array, xs: number[], ya: Float32Array, ys: number[], f: (x: number, y: number) => number) => {
      const nd = Math.max(xs.length, ys.length);
      const pad = (s: number[]) => [...new Array<number>(nd - s.length).fill(1), ...s];
      const out = pad(xs).map((d, i) => Math.max(d, pad(ys)[i]));
      const n = out.reduce((a, d) => a * d, 1);
      const r = new Float32Array(n);
      for (let e = 0; e < n; ++e) {
        const idx: number[] = [];
        let rem = e;
        for (let i = nd - 1; i >= 0; --i) {
          idx[i] = rem % out[i];
          rem = Math.floor(rem / out[i]);
        }
        r[e] = f(at(xa, xs, out, idx), at(ya, ys, out, idx));
      }
      return { r, out };
    };
    let seed = 300;
    for (const [xs, ys] of pairs) {
      const x = randomTensor(xs, ++seed), y = randomTensor(ys, ++seed);
      for (const [name, op, f] of ops) {
        const { r, out } = reference(x.arr.data, xs, y.arr.data, ys, f);
        const z = op(x.t, y.t);
        assert.deepEqual(z.shape, out, `${name} ${xs} ${ys} shape`);
        assert.deepEqual(await z.float32(), r, `${name} [${xs}] [${ys}]`);
      }
      const bs = reference(x.arr.data, xs, y.arr.data, ys, (a) => a);
      assert.deepEqual(await E.broadcastTo(x.t, bs.out).float32(), bs.r, `broadcastTo [${xs}] -> [${bs.out}]`);
    }
  });

  it('tidy() frees intermediates and keeps the result', () => {
    const x = randomTensor([4], 1).t;
    let inner: Tensor | undefined;
    const y = tidy(() => {
      inner = E.exp(x);
      return E.add(inner, x);
    });
    assert.equal(inner!.disposed, true);
    assert.equal(y.disposed, false);
    assert.equal(x.disposed, false);
  });

  it('gradients accumulate over a shared input', async () => {
    const x = fromArray([1, 2, 3], [3]);
    x.requiresGrad = true;
    backward(E.sum(E.add(E.mul(x, x), x)));
    assert.deepEqual(Array.from((await x.grad!.data()) as Float32Array), [3, 5, 7]);
  });

  it('bad shapes give a RangeError naming both shapes', () => {
    const a = fromArray([1, 2, 3], [3]);
    const b = fromArray([1, 2], [2]);
    assert.throws(() => E.add(a, b), (e: Error) => e instanceof RangeError && /\[3\].*\[2\]/.test(e.message));
    assert.throws(() => E.reshape(a, [2, 2]), RangeError);
    assert.throws(() => E.sum(a, [3]), /dim 3 out of range/);
  });

  it('a disposed tensor cannot be used', () => {
    const a = fromArray([1], [1]);
    a.dispose();
    assert.throws(() => E.exp(a), /disposed/);
  });
});
