// conv2d against PyTorch (float64): forward and the input, weight and bias
// gradients at every CPU level this machine has. The shapes walk through each
// path of the native kernel: 1x1 convolutions done as a plain GEMM, im2col per
// sample (large maps), several samples per im2col chunk (small maps, with a
// partial last chunk), stride 2, padding, kernels that reach the padding on
// both sides, non-square kernels and odd sizes.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { conv2d } from '../../src/tensor/ops/conv';
import { add, reshape } from '../../src/tensor/ops/elementwise';
import { fromArray, runOp, runOp1, type Tensor } from '../../src/tensor/tensor';
import { assertClose, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { CHILD_THREADS, rerunWithThreadCounts } from '../helpers/threads';
import { Adam } from '../../src/optim/adam';
import { atLevel, cpuLevels, type CpuLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative 2-norm error (sums of at most a
// few thousand products, each error ~1e-7 relative).
const RTOL = 1e-5;


async function data(t: Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array;
}

interface Case {
  name: string;
  x: [number, number, number, number];
  w: [number, number, number, number];
  stride: number;
  padding: number;
  bias: boolean;
}

const cases: Case[] = [
  { name: '3x3 same padding', x: [2, 3, 8, 8], w: [4, 3, 3, 3], stride: 1, padding: 1, bias: true },
  { name: '3x3 stride 2, odd sizes', x: [3, 5, 7, 9], w: [6, 5, 3, 3], stride: 2, padding: 1, bias: false },
  { name: '3x3 no padding', x: [2, 3, 5, 6], w: [2, 3, 3, 3], stride: 1, padding: 0, bias: true },
  { name: '3x3 stride 2 no padding', x: [4, 3, 9, 9], w: [5, 3, 3, 3], stride: 2, padding: 0, bias: true },
  { name: 'kernel as large as the input', x: [1, 2, 4, 5], w: [3, 2, 4, 5], stride: 1, padding: 0, bias: true },
  { name: '1x1 input, 3x3 kernel all over padding', x: [2, 2, 1, 1], w: [3, 2, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'stride 2 with the kernel past the right edge', x: [2, 2, 3, 1], w: [3, 2, 3, 3], stride: 2, padding: 1, bias: false },
  { name: 'non-square kernel', x: [2, 3, 7, 6], w: [4, 3, 1, 3], stride: 1, padding: 1, bias: false },
  { name: '1x1 as a direct GEMM (large map)', x: [2, 4, 24, 24], w: [6, 4, 1, 1], stride: 1, padding: 0, bias: true },
  { name: '1x1 on small maps (chunked)', x: [3, 16, 4, 4], w: [8, 16, 1, 1], stride: 1, padding: 0, bias: false },
  { name: '1x1 stride 2', x: [3, 16, 10, 10], w: [8, 16, 1, 1], stride: 2, padding: 0, bias: true },
  { name: '1x1 with padding', x: [2, 3, 4, 4], w: [5, 3, 1, 1], stride: 1, padding: 1, bias: true },
  { name: 'one sample per chunk (32x32)', x: [2, 8, 32, 32], w: [8, 8, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'many chunks, partial last one', x: [40, 3, 6, 6], w: [4, 3, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'many chunks of 4x4 maps', x: [41, 5, 4, 4], w: [6, 5, 3, 3], stride: 1, padding: 1, bias: false },
  { name: 'wide channels, stride 2', x: [5, 33, 10, 10], w: [17, 33, 3, 3], stride: 2, padding: 1, bias: true },
  // 'same' stride-1 maps of one sample per GEMM: at the AVX-512 level the col
  // matrix is never built (implicit GEMM); these have K past one 128-deep
  // block, maps whose width is not a multiple of the 32-column panel, and a
  // 5x5 kernel
  { name: 'implicit GEMM: 3x3 same, two K blocks, 9x11 map', x: [2, 20, 9, 11], w: [10, 20, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'implicit GEMM: 5x5 same, 12x13 map', x: [1, 6, 12, 13], w: [7, 6, 5, 5], stride: 1, padding: 2, bias: false },
  { name: 'implicit GEMM: 3x3 same, 40x40 map', x: [1, 3, 40, 40], w: [9, 3, 3, 3], stride: 1, padding: 1, bias: true },
  // the input gradient of a 'same' convolution as a 'same' convolution of gy
  // with the flipped, transposed weights (AVX-512, from 16 input channels),
  // and the direct weight gradient (AVX-512, O*C <= 64*64): maps under one
  // 16-pixel block, samples summed per chunk, O and C*kH*kW not multiples of 4
  { name: 'same conv input gradient: 24 -> 13 channels, 3 samples, 7x5 map', x: [3, 24, 7, 5], w: [13, 24, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'same conv input gradient: 17 -> 40 channels, 1 sample, 16x16', x: [1, 17, 16, 16], w: [40, 17, 3, 3], stride: 1, padding: 1, bias: false },
  { name: 'direct weight gradient: 3x3 maps, 6 samples', x: [6, 9, 3, 3], w: [7, 9, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'direct weight gradient: 5x5 kernel, 17x16 map', x: [2, 5, 17, 16], w: [6, 5, 5, 5], stride: 1, padding: 2, bias: false },
  { name: 'direct weight gradient: 1x1 map', x: [3, 4, 1, 1], w: [5, 4, 3, 3], stride: 1, padding: 1, bias: true },
  // the implicit-GEMM weight gradient (AVX-512, 'same', from 128 output
  // channels, maps of whole 16-pixel blocks): K blocks that span samples, a
  // partial last 32-column panel (C*kH*kW not a multiple of 32), O not a
  // multiple of the 8-row tile, two chunks (the second accumulating)
  { name: 'implicit weight gradient: 3 samples of 4x8, 128 <- 5 channels', x: [3, 5, 4, 8], w: [128, 5, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'implicit weight gradient: 2 chunks, 5x5 kernel, 130 <- 3 channels', x: [20, 3, 4, 8], w: [130, 3, 5, 5], stride: 1, padding: 2, bias: false },
  { name: 'implicit weight gradient: 16x16 maps, 128 <- 40 channels', x: [2, 40, 16, 16], w: [128, 40, 3, 3], stride: 1, padding: 1, bias: true },
  // Winograd F(2x2, 3x3) forward (AVX-512; 3x3 'same', >= 32 channels each
  // way, >= 64 tiles per chunk): one sample, odd maps (tiles cut by the
  // edge), channels not multiples of 8, C past one 128-deep K block, tiles of
  // several samples in one chunk, and chunks spread over threads with a
  // partial last one (9 samples of 64 tiles: chunks of 4)
  { name: 'Winograd: 32 -> 32 channels, 16x16, 1 sample', x: [1, 32, 16, 16], w: [32, 32, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'Winograd: odd 17x15 map, 40 -> 36 channels, 2 samples', x: [2, 40, 17, 15], w: [36, 40, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'Winograd: 8x8 maps, 5 samples in one chunk, 33 -> 34 channels', x: [5, 33, 8, 8], w: [34, 33, 3, 3], stride: 1, padding: 1, bias: false },
  { name: 'Winograd: 130 -> 40 channels (two K blocks), 18x16', x: [1, 130, 18, 16], w: [40, 130, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'Winograd: 9 samples, chunks of 4', x: [9, 32, 16, 16], w: [32, 32, 3, 3], stride: 1, padding: 1, bias: true },
  // under 64 tiles per chunk (8x8 maps at batch 1): the 16 products transposed
  { name: 'Winograd transposed: 8x8, 1 sample, 40 -> 41 channels', x: [1, 40, 8, 8], w: [41, 40, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'Winograd transposed: 7x7, 2 samples, 140 -> 36 channels', x: [2, 140, 7, 7], w: [36, 140, 3, 3], stride: 1, padding: 1, bias: false },
  // small maps (at most 16 output pixels per chunk) at AVX-512: the GEMM
  // transposed, W^T as kept B panels; O past one 32-wide panel and not a
  // multiple of it, 1x1, stride 2
  { name: 'small map transposed: 4x4, 40 -> 70 channels', x: [1, 40, 4, 4], w: [70, 40, 3, 3], stride: 1, padding: 1, bias: true },
  { name: 'small map transposed: 2x2, 3 samples', x: [3, 24, 2, 2], w: [36, 24, 3, 3], stride: 1, padding: 1, bias: false },
  { name: 'small map transposed: 1x1 conv on a 3x3 map', x: [1, 48, 3, 3], w: [40, 48, 1, 1], stride: 1, padding: 0, bias: true },
  { name: 'small map transposed: stride 2 to 4x4', x: [1, 16, 7, 7], w: [20, 16, 3, 3], stride: 2, padding: 1, bias: true },
];

describe('conv2d against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  const initial = native().info().cpuLevel;
  before(async () => (oracle = await Oracle.start()));
  after(() => {
    native().setCpuLevel(initial);
    oracle.close();
  });

  let seed = 500;
  // Every level this machine has; in the child runs below (other thread
  // counts), the best level only.
  const levels = CHILD_THREADS ? cpuLevels().slice(-1) : cpuLevels();
  for (const level of levels) {
    describe(`at CPU level ${level}${CHILD_THREADS ? `, ${native().info().threads} thread(s)` : ''}`, () => {
      before(() => native().setCpuLevel(level));
      for (const c of cases) {
        it(`${c.name}: x ${c.x.join('x')}, w ${c.w.join('x')}, stride ${c.stride}, padding ${c.padding}${c.bias ? ', bias' : ''}`, async () => {
          const x = randomTensor(c.x, seed++);
          const w = randomTensor(c.w, seed++, 0.5);
          const b = c.bias ? randomTensor([c.w[0]], seed++) : null;
          x.t.requiresGrad = true;
          w.t.requiresGrad = true;
          if (b) b.t.requiresGrad = true;
          const y = conv2d(x.t, w.t, b ? b.t : null, { stride: c.stride, padding: c.padding });
          const gy = randomTensor(y.shape, seed++);
          backward(y, gy.t);
          const wrt = b ? ['x', 'weight', 'bias'] : ['x', 'weight'];
          const ref = await oracle.call(
            'conv2d',
            { x: x.arr, weight: w.arr, bias: b ? b.arr : null },
            { stride: c.stride, padding: c.padding },
            { wrt, gradOutputs: [gy.arr] },
          );
          assert.deepEqual([...y.shape], ref.outputs[0].shape, 'output shape');
          assertClose(await data(y), ref.outputs[0].data as Float32Array, RTOL, 'forward');
          assertClose(await data(x.t.grad!), ref.grads.x.data as Float32Array, RTOL, 'grad x');
          assertClose(await data(w.t.grad!), ref.grads.weight.data as Float32Array, RTOL, 'grad weight');
          if (b) assertClose(await data(b.t.grad!), ref.grads.bias.data as Float32Array, RTOL, 'grad bias');
        });
      }
    });
  }

  it('the bias gradient alone (weight frozen) and the input gradient alone', async () => {
    const x = randomTensor([2, 3, 5, 5], 1);
    const w = randomTensor([4, 3, 3, 3], 2);
    const b = randomTensor([4], 3);
    b.t.requiresGrad = true;
    const y = conv2d(x.t, w.t, b.t, { padding: 1 });
    const gy = randomTensor(y.shape, 4);
    backward(y, gy.t);
    const ref = await oracle.call('conv2d', { x: x.arr, weight: w.arr, bias: b.arr }, { padding: 1 }, { wrt: ['x', 'bias'], gradOutputs: [gy.arr] });
    assertClose(await data(b.t.grad!), ref.grads.bias.data as Float32Array, RTOL, 'grad bias');
    assert.equal(w.t.grad, null);
    assert.equal(x.t.grad, null);

    const x2 = randomTensor([2, 3, 5, 5], 5);
    x2.t.requiresGrad = true;
    const y2 = conv2d(x2.t, w.t, null, { stride: 2 });
    const gy2 = randomTensor(y2.shape, 6);
    backward(y2, gy2.t);
    const ref2 = await oracle.call('conv2d', { x: x2.arr, weight: w.arr }, { stride: 2 }, { wrt: ['x'], gradOutputs: [gy2.arr] });
    assertClose(await data(x2.t.grad!), ref2.grads.x.data as Float32Array, RTOL, 'grad x');
    assert.equal(w.t.grad, null);
  });
});

// The fused adds of conv2d_forward (a UNet block's time embedding and skip
// connection) against the plain convolution followed by the adds, at every
// CPU level and on every path: implicit GEMM, im2col, 1x1 direct, chunks of
// small maps (nb > 1), stride 2; gradients of all five inputs.
describe('conv2d with addChannel and residual', () => {
  const shapes: [string, number[], number[], number, number][] = [
    ['3x3 same (implicit at AVX-512)', [2, 6, 9, 11], [5, 6, 3, 3], 1, 1],
    ['3x3 no padding (im2col)', [2, 3, 7, 6], [4, 3, 3, 3], 1, 0],
    ['1x1 (direct)', [2, 4, 12, 12], [3, 4, 1, 1], 1, 0],
    ['4x4 maps in chunks', [9, 5, 4, 4], [6, 5, 3, 3], 1, 1],
    ['stride 2', [3, 4, 9, 9], [5, 4, 3, 3], 2, 1],
    ['3x3 same (Winograd at AVX-512)', [2, 32, 11, 12], [40, 32, 3, 3], 1, 1],
    ['small map (transposed GEMM at AVX-512)', [2, 20, 2, 3], [33, 20, 3, 3], 1, 1],
    ['8x8 map (transposed Winograd at AVX-512)', [1, 32, 8, 8], [36, 32, 3, 3], 1, 1],
  ];
  for (const level of cpuLevels())
    for (const [name, xs, ws, stride, padding] of shapes)
      for (const which of ['both', 'channel', 'residual'] as const)
        it(`${level}: ${name}, ${which}`, async () => {
          await atLevel(level, async () => {
            const x = randomTensor(xs, 41), w = randomTensor(ws, 42), b = randomTensor([ws[0]], 43);
            const y0 = conv2d(x.t, w.t, b.t, { stride, padding });
            const ac = which !== 'residual' ? randomTensor([xs[0], ws[0]], 44) : null;
            const rs = which !== 'channel' ? randomTensor([...y0.shape], 45) : null;
            y0.dispose();
            const run = (fused: boolean) => {
              for (const t of [x.t, w.t, b.t, ac?.t, rs?.t]) if (t) { t.requiresGrad = true; t.grad?.dispose(); t.grad = null; }
              let y: Tensor;
              if (fused) {
                y = conv2d(x.t, w.t, b.t, { stride, padding, addChannel: ac?.t ?? null, residual: rs?.t ?? null });
              } else {
                y = conv2d(x.t, w.t, b.t, { stride, padding });
                if (ac) y = add(y, reshape(ac.t, [xs[0], ws[0], 1, 1]));
                if (rs) y = add(rs.t, y);
              }
              const gy = randomTensor([...y.shape], 46);
              backward(y, gy.t);
              return [y, x.t.grad!, w.t.grad!, b.t.grad!, ac?.t.grad ?? null, rs?.t.grad ?? null];
            };
            const want = await Promise.all(run(false).map((t) => (t ? data(t) : null)));
            const got = await Promise.all(run(true).map((t) => (t ? data(t) : null)));
            ['y', 'grad x', 'grad weight', 'grad bias', 'grad addChannel', 'grad residual'].forEach((what, i) => {
              if (want[i]) assertClose(got[i]!, want[i]!, 1e-6, what);
            });
          });
        });
});

describe('conv2d weight gradient across threads', () => {
  it('is bit-identical from run to run with several threads (chunks go to groups by index)', async () => {
    // 16 samples on 4 threads: 4 groups, each summing its own chunks. When
    // groups took chunks from a shared queue, a slowed thread (4 threads on
    // this 2-core machine) took fewer, and the float sums came out in another
    // order from one run to the next.
    const original = native().info().threads;
    const x = randomTensor([16, 8, 12, 12], 21), gy = randomTensor([16, 16, 12, 12], 22);
    try {
      native().setThreads(4);
      let first: Float32Array | null = null;
      for (let run = 0; run < 20; ++run) {
        const gw = runOp1('conv2d_backward_weight', [gy.t, x.t], { stride: 1, padding: 1, kernel_size: [3, 3] });
        const v = await data(gw);
        gw.dispose();
        if (!first) first = v;
        else assert.deepEqual(v, first, `run ${run} differs from the first`);
      }
    } finally {
      native().setThreads(original);
      x.t.dispose();
      gy.t.dispose();
    }
  });
});

// The forward keeps each weight met twice packed for the micro-kernel,
// keyed by the weight's storage and its count of in-place writes: a weight
// updated in place (loadStateDict's copy_, an optimizer step) must be
// repacked, not served stale. Each result is compared with the same
// convolution of a fresh tensor holding the new values.
describe('conv2d packed-weight cache', () => {
  // one shape per kept layout: the GEMM's packed weights, the Winograd
  // transform (AVX-512), W^T as B panels for small maps (AVX-512)
  const shapes: [string, number[], number[]][] = [
    ['im2col / implicit GEMM', [2, 5, 7, 7], [12, 5, 3, 3]],
    ['Winograd', [1, 32, 16, 16], [32, 32, 3, 3]],
    ['small map', [1, 20, 4, 4], [33, 20, 3, 3]],
    ['Winograd transposed', [1, 32, 8, 8], [32, 32, 3, 3]],
  ];
  for (const level of cpuLevels())
    for (const [name, xs, ws] of shapes)
    it(`sees in-place weight updates (${level}, ${name})`, async () => {
      await atLevel(level, async () => {
        const x = randomTensor(xs, 11).t;
        const w = randomTensor(ws, 12).t;
        const b = randomTensor([ws[0]], 13).t;
        const y1 = await data(conv2d(x, w, b, { padding: 1 }));
        // met once (packed into scratch), met again (kept), served from the cache
        for (let i = 0; i < 2; ++i) assert.deepEqual(await data(conv2d(x, w, b, { padding: 1 })), y1);
        // copy_ new values into the same storage
        const w2 = randomTensor(ws, 14);
        runOp('copy_', [w, fromArray(w2.arr.data, ws)]);
        const y2 = await data(conv2d(x, w, b, { padding: 1 }));
        const want2 = await data(conv2d(x, fromArray(w2.arr.data, ws), b, { padding: 1 }));
        assert.deepEqual(y2, want2);
        assert.notDeepEqual(y2, y1);
        // an optimizer step updates the weight in place too
        w.requiresGrad = true;
        const opt = new Adam([['w', w]], { lr: 0.1 });
        w.grad = randomTensor(ws, 15).t;
        opt.step();
        const w3 = await data(w);
        const y3 = await data(conv2d(x, w, b, { padding: 1 }));
        const want3 = await data(conv2d(x, fromArray(w3, ws), b, { padding: 1 }));
        assert.deepEqual(y3, want3);
        assert.notDeepEqual(y3, y2);
        opt.dispose();
      });
    });
});

// The Winograd F(2x2, 3x3) forward (both forms) against its plain reference
// (TDQ_CONV_WINOGRAD=ref: scalar loops in double, conv2d_winograd.cpp) and
// against the implicit GEMM (TDQ_CONV_WINOGRAD=0), with and without the
// fused adds. Below AVX-512 the default is the GEMM path, which must agree
// with the reference as well.
describe('conv2d Winograd against its plain reference', () => {
  const shapes: [string, number[], number[]][] = [
    ['1 sample, 16x16', [1, 32, 16, 16], [32, 32, 3, 3]],
    ['odd 13x9 maps, 3 samples, 36 -> 41 channels', [3, 36, 13, 9], [41, 36, 3, 3]],
    ['200 -> 48 channels (two K blocks), 18x16', [1, 200, 18, 16], [48, 200, 3, 3]],
    ['6 samples of 8x8', [6, 64, 8, 8], [32, 64, 3, 3]],
    ['transposed: 1 sample of 8x8, 41 outputs', [1, 48, 8, 8], [41, 48, 3, 3]],
    ['transposed: 3 samples of 7x8, 200 inputs', [3, 200, 7, 8], [40, 200, 3, 3]],
  ];
  const withMode = async (mode: string | undefined, f: () => Promise<Float32Array>) => {
    const before = process.env.TDQ_CONV_WINOGRAD;
    if (mode === undefined) delete process.env.TDQ_CONV_WINOGRAD;
    else process.env.TDQ_CONV_WINOGRAD = mode;
    try {
      return await f();
    } finally {
      if (before === undefined) delete process.env.TDQ_CONV_WINOGRAD;
      else process.env.TDQ_CONV_WINOGRAD = before;
    }
  };
  for (const level of cpuLevels())
    for (const [name, xs, ws] of shapes)
      for (const adds of [false, true])
        it(`${level}: ${name}${adds ? ', addChannel and residual' : ''}`, async () => {
          await atLevel(level, async () => {
            const x = randomTensor(xs, 61).t, w = randomTensor(ws, 62, 0.5).t, b = randomTensor([ws[0]], 63).t;
            const ac = adds ? randomTensor([xs[0], ws[0]], 64).t : null;
            const rs = adds ? randomTensor([xs[0], ws[0], xs[2], xs[3]], 65).t : null;
            const run = () => data(conv2d(x, w, b, { padding: 1, addChannel: ac, residual: rs }));
            const fast = await withMode(undefined, run);
            const ref = await withMode('ref', run);
            const gemm = await withMode('0', run);
            assertClose(fast, ref, 2e-6, 'default vs reference');
            assertClose(gemm, ref, 2e-6, 'implicit GEMM vs reference');
            // the reference is no copy of the GEMM path: it differs in rounding
            assert.notDeepEqual(ref, gemm);
          });
        });
});

describe('conv2d on an empty batch', () => {
  it('gives an empty output, zero weight and bias gradients', async () => {
    const x = fromArray(new Float32Array(0), [0, 3, 5, 5]);
    const w = fromArray(new Float32Array(4 * 3 * 3 * 3).fill(1), [4, 3, 3, 3]);
    const b = fromArray(new Float32Array(4).fill(1), [4]);
    w.requiresGrad = true;
    b.requiresGrad = true;
    const y = conv2d(x, w, b, { padding: 1 });
    assert.deepEqual([...y.shape], [0, 4, 5, 5]);
    backward(y, fromArray(new Float32Array(0), [0, 4, 5, 5]));
    assert.deepEqual(Array.from(await data(w.grad!)), new Array(4 * 27).fill(0));
    assert.deepEqual(Array.from(await data(b.grad!)), [0, 0, 0, 0]);
  });
});

describe('conv2d bad inputs', () => {
  const x = fromArray(new Float32Array(2 * 3 * 5 * 5), [2, 3, 5, 5]);
  const w = fromArray(new Float32Array(4 * 3 * 3 * 3), [4, 3, 3, 3]);
  const isRange = (re: RegExp) => (e: Error) => e instanceof RangeError && re.test(e.message);
  const isType = (re: RegExp) => (e: Error) => e instanceof TypeError && re.test(e.message);

  it('a channel mismatch names weight and x', () => {
    const w2 = fromArray(new Float32Array(4 * 2 * 3 * 3), [4, 2, 3, 3]);
    assert.throws(() => conv2d(x, w2, null), isRange(/'weight'.*2 input channels.*'x'.*has 3/));
  });

  it('a kernel larger than the padded input names weight', () => {
    const w7 = fromArray(new Float32Array(4 * 3 * 7 * 7), [4, 3, 7, 7]);
    assert.throws(() => conv2d(x, w7, null), isRange(/kernel 7x7 of argument 'weight' is larger than the padded input 5x5/));
    // ... and is fine once padding makes room.
    assert.deepEqual([...conv2d(x, w7, null, { padding: 1 }).shape], [2, 4, 1, 1]);
  });

  it('non-positive stride and negative padding name the attribute', () => {
    assert.throws(() => conv2d(x, w, null, { stride: 0 }), isRange(/'stride' must be a positive integer, got 0/));
    assert.throws(() => conv2d(x, w, null, { stride: -2 }), isRange(/'stride'/));
    assert.throws(() => conv2d(x, w, null, { padding: -1 }), isRange(/'padding' must be >= 0/));
    assert.throws(() => conv2d(x, w, null, { stride: 1.5 }), isType(/'stride' must be an integer/));
  });

  it('wrong ranks, bias shape and dtype name the argument', () => {
    assert.throws(() => conv2d(fromArray(new Float32Array(75), [3, 5, 5]), w, null), isRange(/argument 'x' must have 4 dimensions/));
    assert.throws(() => conv2d(x, fromArray(new Float32Array(12), [4, 3]), null), isRange(/argument 'weight' must have 4 dimensions/));
    assert.throws(() => conv2d(x, w, fromArray(new Float32Array(3), [3])), isRange(/argument 'bias' must have shape \[4\]/));
    assert.throws(() => conv2d(fromArray(new Int32Array(150), [2, 3, 5, 5], 'int32'), w, null), isType(/argument 'x' must be float32/));
  });

  it('addChannel and residual of the wrong shape are named', () => {
    const x = randomTensor([2, 3, 5, 5], 1).t, w = randomTensor([4, 3, 3, 3], 2).t;
    assert.throws(() => conv2d(x, w, null, { padding: 1, addChannel: randomTensor([2, 3], 3).t }), isRange(/add_channel/));
    assert.throws(() => conv2d(x, w, null, { padding: 1, residual: randomTensor([2, 4, 3, 3], 4).t }), isRange(/residual/));
  });
  it('the backward ops check their gradient against the geometry', () => {
    const gy = fromArray(new Float32Array(2 * 4 * 2 * 2), [2, 4, 2, 2]);
    assert.throws(
      () => runOp1('conv2d_backward_input', [gy, w], { stride: 1, padding: 1, input_shape: [2, 3, 5, 5] }),
      isRange(/argument 'gy' must have shape \[2, 4, 5, 5\]/),
    );
    assert.throws(
      () => runOp1('conv2d_backward_weight', [gy, x], { stride: 1, padding: 0, kernel_size: [3, 3] }),
      isRange(/argument 'gy' must have shape \[2, 4, 3, 3\]/),
    );
    assert.throws(() => runOp1('conv2d_backward_input', [gy, w], { input_shape: [2, 3] }), isRange(/'input_shape'/));
  });
});

rerunWithThreadCounts('conv2d', __filename, skip ?? false);
