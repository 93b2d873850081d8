import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import {
  scaledDotProductAttention,
  scaledDotProductAttentionChannelsMajor,
  scaledDotProductAttentionSequenceMajor,
} from '../../src/tensor/ops/attention';
import { native } from '../../src/tensor/native';
import { fromArray, runOp, sync, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable, type OracleResult } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative error in the 2-norm, at every
// CPU level the machine has (the scalar reference and the AVX2 / AVX-512 tiles).
const RTOL_FWD = 1e-5; // measured <= 1.3e-6 (forward and logsumexp)
const RTOL_GRAD = 1e-5; // measured <= 2.7e-6 (the sharp-softmax case)


describe('scaledDotProductAttention against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  // B, H, Lq, Lk, D, Dv, scale (undefined: 1/sqrt(D))
  const cases: [number, number, number, number, number, number, number | undefined][] = [
    [1, 1, 5, 7, 8, 8, undefined],
    [2, 3, 17, 33, 16, 24, undefined], // Lq != Lk, Dv != D
    [2, 1, 100, 37, 33, 17, 0.3], // odd head dims: vector tails
    [1, 1, 65, 129, 40, 40, undefined], // one past the block sizes
    [1, 2, 300, 300, 32, 32, undefined], // several query and key blocks
    [1, 2, 64, 300, 64, 64, 1.5], // sharp softmax
    [1, 1, 1024, 1024, 64, 64, undefined],
    [1, 2, 70, 70, 24, 24, undefined], // the LDM head dim 24: a half vector at AVX-512
    [1, 3, 33, 2, 5, 3, undefined], // two keys; Lq one past a vector, head dims below one vector
  ];
  for (const [B, H, Lq, Lk, D, Dv, scale] of cases) {
    const name = `B=${B} H=${H} Lq=${Lq} Lk=${Lk} D=${D} Dv=${Dv} scale=${scale ?? '1/sqrt(D)'}`;
    it(name, async () => {
      const q = randomTensor([B, H, Lq, D], 61);
      const k = randomTensor([B, H, Lk, D], 62);
      const v = randomTensor([B, H, Lk, Dv], 63);
      const gy = randomTensor([B, H, Lq, Dv], 64);
      const attrs = scale === undefined ? {} : { scale };
      const ref: OracleResult = await oracle.call('attention', { q: q.arr, k: k.arr, v: v.arr }, attrs, {
        wrt: ['q', 'k', 'v'],
        gradOutputs: [gy.arr, null],
      });
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          for (const t of [q.t, k.t, v.t]) {
            t.grad?.dispose();
            t.grad = null;
            t.requiresGrad = true;
          }
          const y = scaledDotProductAttention(q.t, k.t, v.t, scale === undefined ? undefined : { scale });
          assertShape(y, [B, H, Lq, Dv]);
          backward(y, gy.t);
          assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_FWD, `${level} forward`);
          assertClose(await q.t.grad!.float32(), ref.grads.q.data as Float32Array, RTOL_GRAD, `${level} grad q`);
          assertClose(await k.t.grad!.float32(), ref.grads.k.data as Float32Array, RTOL_GRAD, `${level} grad k`);
          assertClose(await v.t.grad!.float32(), ref.grads.v.data as Float32Array, RTOL_GRAD, `${level} grad v`);
          // The saved logsumexp of the scaled scores.
          const [o, lse] = runOp('attention_forward', [q.t, k.t, v.t], attrs);
          assertShape(lse, [B, H, Lq]);
          assertClose(await lse.float32(), ref.outputs[1].data as Float32Array, RTOL_FWD, `${level} logsumexp`);
          o.dispose();
          lse.dispose();
        });
      }
    });
  }

  it('only the inputs that need a gradient get one', async () => {
    const q = randomTensor([1, 1, 9, 8], 71).t, k = randomTensor([1, 1, 9, 8], 72).t, v = randomTensor([1, 1, 9, 8], 73).t;
    v.requiresGrad = true;
    backward(scaledDotProductAttention(q, k, v), randomTensor([1, 1, 9, 8], 74).t);
    assert.equal(q.grad, null);
    assert.equal(k.grad, null);
    assertShape(v.grad!, [1, 1, 9, 8]);
  });
});

// (B, H, L, D) <-> (B, H, D, L): the last two dims swapped.
function swapLast2(a: Float32Array, bh: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let m = 0; m < bh; ++m)
    for (let r = 0; r < rows; ++r)
      for (let c = 0; c < cols; ++c) out[m * rows * cols + c * rows + r] = a[m * rows * cols + r * cols + c];
  return out;
}
// (B, n1, n2, d) -> (B, n2, n1, d): the middle dims swapped.
function swapMid(a: Float32Array, B: number, n1: number, n2: number, d: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let m = 0; m < B; ++m)
    for (let i = 0; i < n1; ++i)
      for (let j = 0; j < n2; ++j) out.set(a.subarray(((m * n1 + i) * n2 + j) * d, ((m * n1 + i) * n2 + j + 1) * d), ((m * n2 + j) * n1 + i) * d);
  return out;
}

interface Layout {
  name: string;
  op: string;
  fn: (q: Tensor, k: Tensor, v: Tensor, opts?: { scale?: number }) => Tensor;
  shape: (B: number, H: number, L: number, D: number) => number[];
  /** from tokens-major (B, H, L, D) */
  to: (a: Float32Array, B: number, H: number, L: number, D: number) => Float32Array;
  /** to tokens-major */
  from: (a: Float32Array, B: number, H: number, L: number, D: number) => Float32Array;
}
const LAYOUTS: Layout[] = [
  {
    name: 'channels-major (B, H, D, L)',
    op: 'attention_cm',
    fn: scaledDotProductAttentionChannelsMajor,
    shape: (B, H, L, D) => [B, H, D, L],
    to: (a, B, H, L, D) => swapLast2(a, B * H, L, D),
    from: (a, B, H, L, D) => swapLast2(a, B * H, D, L),
  },
  {
    name: 'sequence-major (B, L, H, D)',
    op: 'attention_blhd',
    fn: scaledDotProductAttentionSequenceMajor,
    shape: (B, H, L, D) => [B, L, H, D],
    to: (a, B, H, L, D) => swapMid(a, B, H, L, D),
    from: (a, B, H, L, D) => swapMid(a, B, L, H, D),
  },
];

for (const lay of LAYOUTS) {
  describe(`${lay.name} attention (${lay.op}_forward / backward)`, () => {
    // B, H, Lq, Lk, D, Dv, scale: odd lengths, head dims off the vector width,
    // L below one query tile, one key, several key tiles.
    const cases: [number, number, number, number, number, number, number | undefined][] = [
      [1, 8, 64, 64, 24, 24, undefined],
      [2, 3, 17, 33, 16, 24, undefined],
      [2, 1, 100, 37, 33, 17, 0.3],
      [1, 1, 65, 129, 40, 40, undefined],
      [1, 2, 4, 4, 96, 96, undefined],
      [1, 1, 3, 1, 7, 5, undefined],
      [2, 5, 200, 150, 9, 11, 1.5],
    ];
    for (const [B, H, Lq, Lk, D, Dv, scale] of cases) {
      const name = `B=${B} H=${H} Lq=${Lq} Lk=${Lk} D=${D} Dv=${Dv} scale=${scale ?? '1/sqrt(D)'}`;
      it(`${name}: the tokens-major op's results, rearranged, bitwise at every CPU level`, async () => {
        const q = randomTensor([B, H, Lq, D], 161), k = randomTensor([B, H, Lk, D], 162), v = randomTensor([B, H, Lk, Dv], 163);
        const gy = randomTensor([B, H, Lq, Dv], 164);
        const mk = (a: Float32Array, L: number, d: number) => fromArray(lay.to(a, B, H, L, d), lay.shape(B, H, L, d));
        const qc = mk(q.arr.data, Lq, D), kc = mk(k.arr.data, Lk, D), vc = mk(v.arr.data, Lk, Dv), gc = mk(gy.arr.data, Lq, Dv);
        const opts = scale === undefined ? undefined : { scale };
        for (const level of cpuLevels()) {
          await atLevel(level, async () => {
            for (const t of [q.t, k.t, v.t, qc, kc, vc]) {
              t.grad?.dispose();
              t.grad = null;
              t.requiresGrad = true;
            }
            const y = scaledDotProductAttention(q.t, k.t, v.t, opts);
            backward(y, gy.t);
            const yc = lay.fn(qc, kc, vc, opts);
            assertShape(yc, lay.shape(B, H, Lq, Dv));
            backward(yc, gc);
            const same = async (a: Tensor, b: Tensor, L: number, d: number, what: string) =>
              assert.deepEqual(lay.from(await b.float32(), B, H, L, d), await a.float32(), `${level} ${what}`);
            await same(y, yc, Lq, Dv, 'forward');
            await same(q.t.grad!, qc.grad!, Lq, D, 'grad q');
            await same(k.t.grad!, kc.grad!, Lk, D, 'grad k');
            await same(v.t.grad!, vc.grad!, Lk, Dv, 'grad v');
            const attrs = scale === undefined ? {} : { scale };
            const [o1, l1] = runOp('attention_forward', [q.t, k.t, v.t], attrs);
            const [o2, l2] = runOp(`${lay.op}_forward`, [qc, kc, vc], attrs);
            assertShape(l2, [B, H, Lq]);
            assert.deepEqual(await l2.float32(), await l1.float32(), `${level} logsumexp`);
            for (const t of [o1, l1, o2, l2]) t.dispose();
          });
        }
      });
    }

    it('argument checks name the argument and the layout', () => {
      const t = (B: number, H: number, L: number, D: number) => randomTensor(lay.shape(B, H, L, D), 1).t;
      const naming = (arg: string) => (e: unknown) => e instanceof RangeError && e.message.includes(`'${arg}'`);
      assert.throws(() => lay.fn(t(1, 2, 5, 8), t(1, 2, 6, 16), t(1, 2, 6, 8)), naming('k'));
      assert.throws(() => lay.fn(t(1, 2, 5, 8), t(1, 3, 6, 8), t(1, 3, 6, 8)), naming('k'));
      assert.throws(() => lay.fn(t(1, 2, 5, 8), t(1, 2, 6, 8), t(1, 2, 7, 8)), naming('v'));
      const layoutName = lay.name.slice(lay.name.indexOf('('));
      assert.throws(() => lay.fn(randomTensor([2, 8, 5], 1).t, t(1, 2, 6, 8), t(1, 2, 6, 8)),
        (e: unknown) => e instanceof RangeError && e.message.includes(layoutName));
      const q = t(1, 1, 5, 8);
      assert.throws(() => runOp(`${lay.op}_backward`, [t(1, 1, 6, 8), q, q, q, q, randomTensor([1, 1, 5], 1).t], {}), naming('gO'));
      assert.throws(() => runOp(`${lay.op}_backward`, [q, q, q, q, q, randomTensor([1, 1, 4], 1).t], {}), naming('L'));
    });
  });
}

describe('attention determinism', () => {
  it('forward and gradients are bitwise the same with 1 and 2 threads', async () => {
    const prev = native().info().threads;
    const q = randomTensor([2, 2, 200, 40], 91), k = randomTensor([2, 2, 150, 40], 92), v = randomTensor([2, 2, 150, 24], 93);
    const gy = randomTensor([2, 2, 200, 24], 94).t;
    const runs: Float32Array[][] = [];
    try {
      for (const threads of [1, 2]) {
        native().setThreads(threads);
        for (const t of [q.t, k.t, v.t]) {
          t.grad?.dispose();
          t.grad = null;
          t.requiresGrad = true;
        }
        const y = scaledDotProductAttention(q.t, k.t, v.t);
        backward(y, gy);
        runs.push([await y.float32(), await q.t.grad!.float32(), await k.t.grad!.float32(), await v.t.grad!.float32()]);
      }
    } finally {
      native().setThreads(prev);
    }
    runs[0].forEach((a, i) => assert.deepEqual(a, runs[1][i], ['output', 'grad q', 'grad k', 'grad v'][i]));
  });
});

describe('attention memory', () => {
  it('Lq = Lk = 4096, D = 32: forward and backward peak far below one Lq x Lk score matrix', async () => {
    const L = 4096, D = 32;
    const q = randomTensor([1, 1, L, D], 81).t, k = randomTensor([1, 1, L, D], 82).t, v = randomTensor([1, 1, L, D], 83).t;
    const gy = randomTensor([1, 1, L, D], 84).t;
    for (const t of [q, k, v]) t.requiresGrad = true;
    await sync();
    const scoreBytes = L * L * 4; // one score matrix: 64 MiB
    const inputBytes = L * D * 4; // one of q, k, v: 512 KiB
    const live0 = native().memory().liveBytes;
    native().resetPeakMemory();
    const y = scaledDotProductAttention(q, k, v);
    const out = await y.float32();
    assert.ok(out.every(Number.isFinite));
    const fwdPeak = native().memory().peakBytes - live0;
    backward(y, gy);
    await q.grad!.float32();
    await sync();
    const peak = native().memory().peakBytes - live0;
    // Forward: O, L and a blocked K^T copy. Backward adds dq, dk, dv and
    // blocked copies of q, k, v, dO: all linear in L.
    assert.ok(fwdPeak <= 3 * inputBytes, `forward allocated ${fwdPeak} bytes at peak`);
    assert.ok(peak <= 10 * inputBytes, `forward + backward allocated ${peak} bytes at peak`);
    assert.ok(peak < scoreBytes / 8, `peak ${peak} is not far below the ${scoreBytes}-byte score matrix`);
  });
});

describe('attention argument checks', () => {
  const rangeNaming = (arg: string) => (e: unknown) => e instanceof RangeError && e.message.includes(`'${arg}'`);
  const typeNaming = (arg: string) => (e: unknown) => e instanceof TypeError && e.message.includes(`'${arg}'`);
  const t = (shape: number[]) => randomTensor(shape, 1).t;

  it('q / k head-dimension mismatch', () => {
    assert.throws(() => scaledDotProductAttention(t([1, 2, 5, 8]), t([1, 2, 6, 16]), t([1, 2, 6, 8])), rangeNaming('k'));
  });
  it('batch or head mismatch', () => {
    assert.throws(() => scaledDotProductAttention(t([1, 2, 5, 8]), t([1, 3, 6, 8]), t([1, 3, 6, 8])), rangeNaming('k'));
    assert.throws(() => scaledDotProductAttention(t([2, 2, 5, 8]), t([2, 2, 6, 8]), t([1, 2, 6, 8])), rangeNaming('v'));
  });
  it('v with another key count than k', () => {
    assert.throws(() => scaledDotProductAttention(t([1, 1, 5, 8]), t([1, 1, 6, 8]), t([1, 1, 7, 8])), rangeNaming('v'));
  });
  it('wrong rank, empty keys, non-float32, non-finite scale', () => {
    assert.throws(() => scaledDotProductAttention(t([2, 5, 8]), t([1, 2, 6, 8]), t([1, 2, 6, 8])), rangeNaming('q'));
    assert.throws(() => scaledDotProductAttention(t([1, 1, 5, 8]), t([1, 1, 0, 8]), t([1, 1, 0, 8])), rangeNaming('k'));
    const ints = fromArray(new Int32Array(40), [1, 1, 5, 8], 'int32');
    assert.throws(() => scaledDotProductAttention(t([1, 1, 5, 8]), t([1, 1, 5, 8]), ints), typeNaming('v'));
    assert.throws(() => scaledDotProductAttention(t([1, 1, 5, 8]), t([1, 1, 5, 8]), t([1, 1, 5, 8]), { scale: NaN }), rangeNaming('scale'));
  });
  it('attention_backward: saved L of the wrong shape', () => {
    const q = t([1, 1, 5, 8]);
    assert.throws(() => runOp('attention_backward', [q, q, q, q, q, t([1, 1, 4])], {}), rangeNaming('L'));
  });
});
