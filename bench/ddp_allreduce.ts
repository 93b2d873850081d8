// One rank of the allreduce timing (run by bench/ddp.ts under mpirun):
// the median time of an allreduce of N float32 values, the gradient message
// of one training step.
//   mpirun -np 2 node dist/bench/ddp_allreduce.js --floats N [--rounds 20]
import { initCommunicator } from '../src/dist/communicator';
import { fromArray } from '../src/tensor/tensor';
import { benchArgs } from './args';

const USAGE = 'mpirun -np 2 node dist/bench/ddp_allreduce.js --floats N [--rounds 20]';
const OPTIONS = {
  floats: { type: 'string', value: 'N', help: 'float32 values allreduced (one step\'s gradients)' },
  rounds: { type: 'string', value: 'N', default: '20', help: 'timed allreduces (after 3 untimed)' },
} as const;

async function main() {
  const { rounds, n } = benchArgs(USAGE, OPTIONS, (a) => ({ rounds: a.int('rounds', 1), n: a.int('floats', 1) }));
  const comm = await initCommunicator({ mpi: true });
  const t = fromArray(new Float32Array(n).fill(comm.rank + 1), [n]);
  const times: number[] = [];
  for (let i = 0; i < rounds + 3; ++i) {
    await comm.barrier();
    const t0 = process.hrtime.bigint();
    comm.allreduceMean([t]);
    await t.data();
    if (i >= 3) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  if (comm.rank === 0) console.log(JSON.stringify({ ranks: comm.size, floats: n, medianMs: times[times.length >> 1] }));
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
