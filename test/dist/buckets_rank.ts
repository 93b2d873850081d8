// One rank of the bucket test (test/dist/buckets.test.ts runs it under
// mpirun -np 2): each rank's own inputs, two micro-batches; the gradients of
// the blocking allreduce (all at once after the backward pass) against those
// of one-parameter buckets started during the last backward pass. Prints one
// JSON line per rank.
import { GradBuckets } from '../../src/dist/buckets';
import { type Communicator, initCommunicator } from '../../src/dist/communicator';
import { backward } from '../../src/tensor/autograd';
import { scale } from '../../src/tensor/ops';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { lossOf, makeInput, makeParams, zeroGrads } from './buckets_graph';

async function grads(comm: Communicator, ps: Tensor[], buckets: GradBuckets | null): Promise<Float32Array[]> {
  for (let micro = 0; micro < 2; ++micro) {
    const loss = scale(lossOf(ps, makeInput(3, comm.rank * 2 + micro)), 0.5);
    backward(loss, undefined, buckets && micro === 1 ? buckets.hooks() : undefined);
  }
  if (buckets) buckets.finish();
  else comm.allreduceMean(ps.map((p) => p.grad!));
  const out = await Promise.all(ps.map(async (p) => Float32Array.from((await p.grad!.data()) as Float32Array)));
  zeroGrads(ps);
  return out;
}

async function main() {
  const comm = await initCommunicator({ mpi: true });
  const ps = makeParams(7, Number(process.argv[2] ?? 6));
  const blocking = await grads(comm, ps, null);
  const bucketed = await grads(comm, ps, new GradBuckets(comm, ps, 1));
  const differs = ps.map((_, i) => i).filter((i) => !blocking[i].every((v, j) => Object.is(v, bucketed[i][j]))).map((i) => `w${i + 1}`);
  // Reduced at all: the mean differs from this rank's own gradient.
  const local: Float32Array[] = [];
  for (let micro = 0; micro < 2; ++micro) backward(scale(lossOf(ps, makeInput(3, comm.rank * 2 + micro)), 0.5));
  for (const p of ps) local.push(Float32Array.from((await p.grad!.data()) as Float32Array));
  zeroGrads(ps);
  const reduced = local.some((g, i) => g.some((v, j) => v !== blocking[i][j]));
  // Every rank holds the same mean.
  const flat = Float32Array.from(bucketed.flatMap((g) => Array.from(g)));
  const all = (await comm.allgather(fromArray(flat, [flat.length])).data()) as Float32Array;
  const ranksAgree = Array.from({ length: comm.size }, (_, r) => all.subarray(r * flat.length, (r + 1) * flat.length)).every((row) => row.every((v, j) => Object.is(v, flat[j])));
  console.log(JSON.stringify({ rank: comm.rank, same: differs.length === 0, differs, ranksAgree, reduced }));
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
