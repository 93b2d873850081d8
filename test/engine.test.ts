// The engine itself: thread pool resizing, worker_threads (per-environment
// state), settings errors, the profiler, and errors raised on the stream.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';

import { native } from '../src/tensor/native';
import { exp, sum } from '../src/tensor/ops/elementwise';
import { releaseMemory, sync } from '../src/tensor/tensor';
import { fromArray, runOp1 } from '../src/tensor/tensor';

describe('engine', () => {
  it('resizing the thread pool between parallel ops neither hangs nor changes results', { timeout: 60_000 }, async () => {
    const n = 1 << 20;
    const x = fromArray(new Float32Array(n).fill(1), [n]);
    const original = native().info().threads;
    try {
      for (const threads of [1, 3, 2, 4, 2, 1, 2]) {
        native().setThreads(threads);
        assert.equal(native().info().threads, threads);
        for (let i = 0; i < 10; ++i) {
          const s = sum(x);
          assert.equal(await s.item(), n);
          s.dispose();
        }
      }
    } finally {
      native().setThreads(original);
      x.dispose();
    }
  });

  it('works in worker_threads, each with its own stream and memory count', { timeout: 60_000 }, async () => {
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { fromArray } = require(workerData.tensor);
      const { sum } = require(workerData.ops);
      (async () => {
        const x = fromArray(new Float32Array(1000).fill(workerData.v), [1000]);
        const s = await sum(x).item();
        parentPort.postMessage({ s, live: require(workerData.native).native().memory().liveBytes });
      })();`;
    const paths = { tensor: require.resolve('../src/tensor/tensor'), ops: require.resolve('../src/tensor/ops/elementwise'), native: require.resolve('../src/tensor/native') };
    const run = (v: number) =>
      new Promise<{ s: number; live: number }>((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: { ...paths, v } });
        w.once('message', (m) => {
          resolve(m);
          void w.terminate();
        });
        w.once('error', reject);
      });
    const [a, b] = await Promise.all([run(1), run(2)]);
    assert.equal(a.s, 1000);
    assert.equal(b.s, 2000);
    assert.ok(a.live < 1e6 && b.live < 1e6, 'each worker counts only its own tensors');
    const x = fromArray([1, 2, 3], [3]);
    assert.equal(await sum(x).item(), 6, 'the main thread still works after the workers ended');
  });

  it('bad settings are RangeErrors, not crashes', () => {
    assert.throws(() => native().setThreads(0), RangeError);
    assert.throws(() => native().setThreads(1.5), RangeError);
    assert.throws(() => native().setCpuLevel('sse9' as never), /unknown CPU level 'sse9'/);
    assert.throws(() => native().run('conv2d_forward', [null], {}), TypeError);
  });

  it('an error raised while an op runs rejects the next read and the stream goes on', async () => {
    const idx = fromArray([0, 7], [2], 'int32');
    const w = fromArray(new Float32Array(6), [3, 2]);
    const bad = runOp1('embedding', [idx, w]);
    await assert.rejects(bad.data(), /index 7/);
    const ok = sum(fromArray([1, 2], [2]));
    assert.equal(await ok.item(), 3);
  });

  it('the queue cap bounds the memory that queued ops allocate ahead of the engine', async () => {
    const x = fromArray(new Float32Array(1 << 18).fill(0.5), [1 << 18]); // 1 MiB
    const peakOf = async (cap: number): Promise<number> => {
      native().setMaxQueuedBytes(cap);
      await sync();
      native().resetPeakMemory();
      for (let i = 0; i < 64; ++i) exp(x).dispose(); // queued faster than run
      await sync();
      return native().memory().peakBytes - native().memory().liveBytes;
    };
    const capped = await peakOf(4 << 20);
    const free = await peakOf(0);
    native().setMaxQueuedBytes(native().info().maxQueuedBytes || 256 << 20);
    assert.ok(capped <= 6 << 20, `with a 4 MiB cap, 64 MiB of outputs peaked at ${capped} bytes`);
    assert.ok(free > capped, `without a cap the peak (${free}) should exceed the capped one (${capped})`);
    assert.throws(() => native().setMaxQueuedBytes(-1), RangeError);
  });

  it('freed large buffers are cached for reuse up to the cap, and released on request', async () => {
    const n = 1 << 20; // 4 MiB: above the 1 MiB threshold of mapped buffers
    const ones = fromArray(new Float32Array(n).fill(1), [n]);
    try {
      native().releaseHostCache();
      await sync();
      const before = native().memory().cachedBytes;
      assert.equal(before, 0);
      const e = exp(ones);
      const s = sum(e);
      assert.ok(Math.abs((await s.item()) / (n * Math.E) - 1) < 1e-5);
      s.dispose();
      e.dispose();
      await sync();
      const cached = native().memory().cachedBytes;
      assert.ok(cached >= n * 4, `a freed 4 MiB output should be cached, cachedBytes = ${cached}`);
      // A reused block carries the old contents; ops must not read them.
      const zeros = fromArray(new Float32Array(n), [n]);
      const z = exp(zeros), sz = sum(z);
      assert.equal(await sz.item(), n);
      for (const t of [zeros, z, sz]) t.dispose();
      await sync();
      assert.ok(native().releaseHostCache() >= n * 4);
      assert.equal(native().memory().cachedBytes, 0);
      // releaseMemory waits for queued frees first.
      exp(ones).dispose();
      assert.ok((await releaseMemory()) >= n * 4);
      assert.equal(native().memory().cachedBytes, 0);
      // With a zero cap nothing is kept.
      native().setHostCacheBytes(0);
      exp(ones).dispose();
      await sync();
      assert.equal(native().memory().cachedBytes, 0);
      assert.throws(() => native().setHostCacheBytes(-1), /setHostCacheBytes: bytes must be an integer >= 0/);
      assert.throws(() => native().setHostCacheBytes(1.5), RangeError);
    } finally {
      native().setHostCacheBytes(2048 * 2 ** 20); // the default
      ones.dispose();
    }
  });

  it('the profiler times ops by name', async () => {
    native().setProfiling(true);
    const s = sum(fromArray([1, 2, 3], [3]));
    await s.item();
    const p = native().profile();
    native().setProfiling(false);
    assert.ok(p.sum && p.sum.calls >= 1 && p.sum.seconds >= 0, JSON.stringify(p));
  });
});
