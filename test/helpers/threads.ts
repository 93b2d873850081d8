// Running a test file again with other engine thread counts. The thread count
// picks the kernels' paths (whole samples or whole GEMMs per thread when there
// are enough of them, one operation split over threads otherwise), so a file
// of op tests runs again in child processes started with 1 and 3 threads.
// Child processes, because the pool is sized once per process
// (TDQ_NUM_THREADS) rather than resized here.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

/** In a child that rerunWithThreadCounts started: its thread count (as text); undefined in the parent. */
export const CHILD_THREADS = process.env.TDQ_TEST_THREADS;

/** In the parent only: a suite `${what} with other thread counts` that reruns `file` with each of `threads` and expects it to pass. */
export function rerunWithThreadCounts(what: string, file: string, skip: string | false, threads: number[] = [1, 3]): void {
  if (CHILD_THREADS) return;
  describe(`${what} with other thread counts`, { skip }, () => {
    for (const n of threads) {
      it(`passes with ${n} thread(s) (child process)`, () => {
        // NODE_TEST_CONTEXT (set for this file by a parent test runner) would
        // make the child report to that runner instead of printing its results.
        const { NODE_TEST_CONTEXT: _ctx, ...env } = process.env;
        const r = spawnSync(process.execPath, ['--test', file], {
          env: { ...env, TDQ_NUM_THREADS: String(n), TDQ_TEST_THREADS: String(n) },
          encoding: 'utf8',
          timeout: 600_000,
        });
        assert.equal(r.status, 0, `child with ${n} thread(s) failed:\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-2000)}`);
        assert.match(r.stdout, /# fail 0/);
      });
    }
  });
}
