// Data parallelism on GPUs: the native collectives of tensors on 'cuda' go over
// NCCL (rank 0 makes the id, MPI broadcasts it, each rank joins on its own GPU),
// and give what MPI gives for the same values on the CPU. Needs a GPU, MPI and
// NCCL (libnccl.so.2): skipped here with the reason. One GPU runs one rank (NCCL
// allows one rank per device); two or more GPUs run two.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

import { driverGpuCount } from '../../src/tensor/device';
import { cudaSkip } from '../helpers/gpu';
import { mpiSkip } from '../helpers/mpi';

const script = path.join(__dirname, 'nccl_rank.js');

describe('NCCL communicator', { skip: cudaSkip() || mpiSkip() }, () => {
  it('allreduce (blocking and bucketed) and broadcast of device tensors agree with MPI on the CPU', () => {
    const np = Math.min(2, Math.max(1, driverGpuCount()));
    const r = spawnSync('mpirun', ['--oversubscribe', ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : []), '-np', String(np), '-x', 'TDQ_NUM_THREADS=1', process.execPath, script], {
      encoding: 'utf8', timeout: 180_000, env: process.env,
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const lines = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, np, r.stdout);
    for (const l of lines) {
      assert.equal(l.size, np);
      assert.ok(l.sameAsMpi && l.meanOk && l.bucketOk && l.broadcastOk, JSON.stringify(l));
      if (np > 1) assert.equal(l.nccl, true, 'the JS communicator noted NCCL');
    }
  });
});
