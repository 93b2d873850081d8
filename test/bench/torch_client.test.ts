// The node side of the PyTorch bench servers (bench/torch_client.ts), as
// bench/ops.ts, bench/diffusion.ts and bench/ldm_churches.ts start it: the
// thread count and OMP_WAIT_POLICY reach the python process, answers come back
// in order, an error answer rejects naming the script, close() waits for the
// exit.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

import { TorchServer } from '../../bench/torch_client';

const PY = process.env.TDQ_PYTHON ?? '/usr/bin/python3';
const noTorch = spawnSync(PY, ['-c', 'import torch, numpy'], { stdio: 'ignore' }).status !== 0 ? `${PY} with torch and numpy is not installed` : false;

describe('bench TorchServer (bench/torch_client.ts)', { skip: noTorch }, () => {
  it("wait policy 'passive' sets PASSIVE, 'default' removes an inherited one; answers in order; errors name the script", async () => {
    const saved = process.env.OMP_WAIT_POLICY;
    process.env.OMP_WAIT_POLICY = 'ACTIVE';
    try {
      for (const [policy, seen] of [['passive', 'PASSIVE'], ['default', 'default'], ['inherit', 'ACTIVE']] as const) {
        const t = new TorchServer('torch_diffusion.py', 1, policy);
        const [info, bad, again] = await Promise.allSettled([t.call<{ threads: number; omp_wait_policy: string }>({ info: true }), t.call({ bogus: 1 }), t.call<{ threads: number }>({ info: true })]);
        assert.equal(info.status, 'fulfilled');
        assert.deepEqual(info.status === 'fulfilled' && [info.value.threads, info.value.omp_wait_policy], [1, seen], policy);
        assert.equal(bad.status, 'rejected');
        assert.match(String(bad.status === 'rejected' && (bad.reason as Error).message), /^torch_diffusion\.py: .*unknown request/);
        assert.equal(again.status === 'fulfilled' && again.value.threads, 1);
        await t.close();
      }
    } finally {
      if (saved === undefined) delete process.env.OMP_WAIT_POLICY;
      else process.env.OMP_WAIT_POLICY = saved;
    }
  });

  it('torch_ops.py (bench/ops.ts): info with 2 threads', async () => {
    const t = new TorchServer('torch_ops.py', 2, 'inherit');
    const info = await t.call<{ torch: string; threads: number }>({ info: true });
    assert.equal(info.threads, 2);
    assert.match(info.torch, /^\d+\.\d+/);
    await t.close();
  });

  it('a server that exits rejects the waiting call, naming the script and its stderr', async () => {
    const t = new TorchServer('torch_ops.py', 1, 'inherit');
    // torch_ops.py indexes its cases by name: running one never set up raises and ends the process.
    await assert.rejects(t.call({ run: 'no-such-case' }), /^Error: torch_ops\.py: exited with 1: .*KeyError/s);
    await t.close();
  });
});
