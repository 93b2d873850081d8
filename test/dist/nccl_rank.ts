// One rank of the NCCL test (test/dist/nccl.test.ts runs it under mpirun -np N,
// one GPU per rank): the collectives of tensors on 'cuda' (NCCL) against the
// same collectives of the same values on the CPU (MPI), and against the mean
// worked out here. Prints one JSON line per rank.
import { initCommunicator } from '../../src/dist/communicator';
import { fromArray, runOp, runOp1, type Tensor } from '../../src/tensor/tensor';

const SHAPES = [[5], [3, 4], [1]];

function values(rank: number, k: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (rank + 1) * (k + 1) + i * 0.25);
}

function make(rank: number, device: 'cpu' | 'cuda'): Tensor[] {
  return SHAPES.map((s, k) => fromArray(values(rank, k, s.reduce((a, b) => a * b, 1)), s, 'float32', device));
}

async function read(ts: Tensor[]): Promise<number[][]> {
  return Promise.all(ts.map(async (t) => Array.from((await t.data()) as Float32Array)));
}

async function main() {
  const comm = await initCommunicator({ mpi: true });
  const info = runOp1('dist_init', []);
  const [, rank, size] = Array.from((await info.data()) as Int32Array);
  const want = SHAPES.map((s, k) => Array.from({ length: s.reduce((a, b) => a * b, 1) }, (_, i) => {
    let sum = 0;
    for (let r = 0; r < size; ++r) sum += values(r, k, i + 1)[i];
    return sum / size;
  }));
  // Blocking allreduce: NCCL on the device, MPI on the CPU.
  const gpu = make(rank, 'cuda'), cpu = make(rank, 'cpu');
  if (size > 1) comm.allreduceMean(gpu);
  else runOp('dist_allreduce_', gpu, { mean: 1 });
  runOp('dist_allreduce_', cpu, { mean: 1 });
  const g = await read(gpu), c = await read(cpu);
  // Started and waited for (a bucket), on the device.
  const bucket = make(rank, 'cuda');
  runOp('dist_allreduce_start_', bucket, { bucket: 7 });
  runOp('dist_allreduce_wait_', bucket, { bucket: 7, mean: 1 });
  const b = await read(bucket);
  // Broadcast of rank 0's values, on the device.
  const bc = make(rank, 'cuda');
  runOp('dist_broadcast_', bc, { root: 0 });
  const bv = await read(bc);
  const close = (x: number[][]) => x.every((row, k) => row.every((v, i) => Math.abs(v - want[k][i]) <= 1e-6 * Math.max(1, Math.abs(want[k][i]))));
  process.stdout.write(JSON.stringify({
    rank, size, nccl: (comm as { nccl?: boolean }).nccl ?? null,
    sameAsMpi: JSON.stringify(g) === JSON.stringify(c),
    meanOk: close(g), bucketOk: JSON.stringify(b) === JSON.stringify(g),
    broadcastOk: bv.every((row, k) => row.every((v, i) => v === values(0, k, i + 1)[i])),
  }) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
