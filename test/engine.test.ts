// The engine itself: thread pool resizing, worker_threads (per-environment
// state), settings errors, the profiler, and errors raised on the stream.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Worker } from 'node:worker_threads';

import { native } from '../src/tensor/native';
import { exp, sum } from '../src/tensor/ops/elementwise';
import { releaseMemory, sync } from '../src/tensor/tensor';
import { fromArray, runOp, runOp1 } from '../src/tensor/tensor';
import { full } from '../src/tensor/ops/creation';

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

  it('queuing an op allocates nothing: outputs are allocated by the engine when their op runs', async () => {
    const x = fromArray(new Float32Array(1 << 18).fill(0.5), [1 << 18]); // 1 MiB
    await sync();
    native().resetPeakMemory();
    const base = native().memory().liveBytes;
    // Queued far faster than they run; each output is freed as soon as its op has run.
    for (let i = 0; i < 64; ++i) exp(x).dispose();
    await sync();
    const peak = native().memory().peakBytes - base;
    assert.ok(peak <= 2 << 20, `64 queued 1 MiB outputs, disposed at once, peaked at ${peak} bytes above the live ones`);
    // The old queue cap is obsolete: validated, kept, and no longer waited on.
    native().setMaxQueuedBytes(1);
    for (let i = 0; i < 8; ++i) exp(x).dispose();
    native().setMaxQueuedBytes(0);
    assert.throws(() => native().setMaxQueuedBytes(-1), RangeError);
    x.dispose();
  });

  it("a failed op poisons only its outputs and what is computed from them; other reads and sync() are unaffected", async () => {
    const w = fromArray(new Float32Array(6).fill(1), [3, 2]);
    const bad = runOp1('embedding', [fromArray([0, 7], [2], 'int32'), w]);
    const good = fromArray([1, 2], [2]);
    // Queued after the failure, independent of it: must be computed.
    const s = sum(good);
    const derived = sum(exp(bad));
    const mixed = runOp1('add', [exp(bad), exp(good)]);
    await sync(); // never rejects for an op's error
    native().syncBlocking();
    assert.equal(await s.item(), 3);
    for (const t of [bad, derived, mixed]) await assert.rejects(t.data(), (e: Error) => /^embedding: index 7/.test(e.message));
    // The error keeps its class: a bad quantizer step is a RangeError, synchronous reads too.
    const fq = runOp1('fake_quant_forward', [good, fromArray([0], [1])], { bits: 4, signed: true, granularity: 'tensor' });
    const after = exp(fq);
    await assert.rejects(after.data(), (e: Error) => e instanceof RangeError && /^fake_quant_forward: quantizer step 'step' = 0/.test(e.message));
    assert.throws(() => after.dataSync(), RangeError);
    assert.deepEqual(Array.from(exp(good).dataSync() as Float32Array), [Math.fround(Math.E), Math.fround(Math.exp(2))]);
    // An in-place op (no outputs) with a poisoned input poisons the tensor it would have written.
    const dst = fromArray([5, 5], [2]);
    runOp('copy_', [dst, exp(fq)]);
    await assert.rejects(dst.data(), /fake_quant_forward: quantizer step/);
    // ... and not the tensors it only reads.
    const src = fromArray([7, 8], [2]);
    runOp('copy_', [dst, src]);
    assert.deepEqual(Array.from(await src.data()), [7, 8]);
    assert.equal(await sum(good).item(), 3, 'later work is unaffected');
  });

  it('an impossible allocation is a RangeError naming the bytes, never an abort', async () => {
    const huge = full([2 ** 40], 0); // 4 TiB, validly shaped: queued at once, fails when it would run
    await assert.rejects(huge.data(), (e: Error) => e instanceof RangeError && /^full: out of memory: could not allocate 4398046511104 bytes/.test(e.message));
    await assert.rejects(sum(huge).data(), /could not allocate 4398046511104 bytes/);
    // A size that overflows 64 bits is refused when queued.
    assert.throws(() => full([2 ** 40, 2 ** 40], 0), (e: Error) => e instanceof RangeError && /needs more than 2\^64 bytes/.test(e.message));
    assert.equal(await sum(fromArray([1, 2], [2])).item(), 3);
  });

  describe('TDQ_* environment variables are validated when the addon loads', () => {
    const root = path.resolve(__dirname, '..', '..');
    const load = (env: Record<string, string>) => {
      const code = `try { const t = require('./dist/src/index.js'); const x = t.fromArray([1], [1]); console.log('OK', JSON.stringify(t.native().info().threads)); }
        catch (e) { console.log(e.name + ': ' + e.message); process.exit(3); }`;
      const r = spawnSync(process.execPath, ['-e', code], { cwd: root, env: { ...process.env, ...env }, encoding: 'utf8' });
      assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
      return { status: r.status, out: r.stdout.trim() };
    };
    const bad: [Record<string, string>, RegExp][] = [
      [{ TDQ_NUM_THREADS: '1000' }, /^RangeError: TDQ_NUM_THREADS='1000' is not valid: expected an integer from 1 to 256/],
      [{ TDQ_NUM_THREADS: '0' }, /TDQ_NUM_THREADS='0' is not valid: expected an integer from 1 to 256/],
      [{ TDQ_NUM_THREADS: '4x' }, /TDQ_NUM_THREADS='4x' is not valid/],
      [{ TDQ_HOST_CACHE_MB: '-5' }, /TDQ_HOST_CACHE_MB='-5' is not valid: expected an integer from 0 to/],
      [{ TDQ_HOST_CACHE_MB: '1.5' }, /TDQ_HOST_CACHE_MB='1.5' is not valid/],
      [{ TDQ_MAX_QUEUED_MB: '-5' }, /TDQ_MAX_QUEUED_MB='-5' is not valid: expected an integer from 0 to/],
      [{ TDQ_MAX_QUEUED_MB: '99999999999999999999999' }, /TDQ_MAX_QUEUED_MB='9+' is not valid/],
      [{ TDQ_CPU: 'sse9' }, /TDQ_CPU='sse9' is not valid: expected scalar, avx2 or avx512/],
    ];
    if (native().info().bestCpuLevel !== 'avx512') bad.push([{ TDQ_CPU: 'avx512' }, /TDQ_CPU='avx512' is not supported by this CPU/]);
    for (const [env, re] of bad)
      it(`${JSON.stringify(env)} fails the load with a RangeError naming it`, () => {
        const r = load(env);
        assert.equal(r.status, 3, r.out);
        assert.match(r.out, re);
      });
    it('valid values are used', () => {
      assert.deepEqual(load({ TDQ_NUM_THREADS: '3', TDQ_HOST_CACHE_MB: '0', TDQ_MAX_QUEUED_MB: '64', TDQ_CPU: 'scalar' }), { status: 0, out: 'OK 3' });
      assert.deepEqual(load({ TDQ_NUM_THREADS: '' }).status, 0, 'empty means unset');
    });
  });

  it('freed large buffers are cached for reuse up to the cap, and released on request', async () => {
    const n = 1 << 20; // 4 MiB: above the 128 KiB threshold of mapped buffers
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

  it('freed buffers from 128 KiB up are cached too (a small model\'s per-forward outputs), smaller ones are not', async () => {
    const big = fromArray(new Float32Array(1 << 16).fill(1), [1 << 16]); // 256 KiB
    const small = fromArray(new Float32Array(1 << 14).fill(1), [1 << 14]); // 64 KiB
    try {
      native().releaseHostCache();
      exp(small).dispose();
      await sync();
      assert.equal(native().memory().cachedBytes, 0, 'a 64 KiB output goes back to malloc');
      exp(big).dispose();
      await sync();
      assert.ok(native().memory().cachedBytes >= 1 << 18, `a freed 256 KiB output should be cached, cachedBytes = ${native().memory().cachedBytes}`);
      const e = exp(big);
      await sync(); // outputs are allocated on the stream thread
      assert.equal(native().memory().cachedBytes, 0, 'and reused by the next output of its size');
      e.dispose();
      await sync();
    } finally {
      native().releaseHostCache();
      big.dispose();
      small.dispose();
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
