// The communicator of data-parallel runs: which rank this process is, and the
// collectives training needs. Over MPI (the native dist_* ops, run on the
// engine's stream in queue order), or a single process. Collectives of tensors
// on device 'cuda' go over NCCL on the device buffers (the native ops' CUDA
// kernels): the first one joins the NCCL communicator (dist_nccl_init: rank 0
// makes NCCL's id, MPI broadcasts it), so every rank must reach it, as every
// collective. Each rank of a launched run sees one GPU (pinLocalDevice).
import { pinLocalDevice } from '../tensor/device';
import { reshape } from '../tensor/ops/elementwise';
import { type Tensor, fromArray, runOp, runOp1 } from '../tensor/tensor';

export interface PendingAllreduce {
  wait(): void;
}

export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** What runs the collectives ('local' for one process); tensors on 'cuda' go over NCCL, set up by MPI. */
  readonly backend: 'mpi' | 'local';
  /** Whether this rank has joined the NCCL communicator (its first collective of 'cuda' tensors does). */
  readonly nccl?: boolean;
  /** In place: the mean over ranks of each tensor (one message for all of them). */
  allreduceMean(tensors: readonly Tensor[]): void;
  /**
   * The same mean as allreduceMean, started now on the communication thread
   * (the stream goes on with the ops queued after it); wait() queues the
   * write-back into the tensors, which must not change in between.
   */
  startAllreduceMean(tensors: readonly Tensor[]): PendingAllreduce;
  /** In place: rank `root`'s values on every rank. */
  broadcast(tensors: readonly Tensor[], root?: number): void;
  /** (size, n): every rank's (n) float32 tensor, in rank order. */
  allgather(x: Tensor): Tensor;
  barrier(): Promise<void>;
}

/** The one-process communicator: collectives are identities. */
export class LocalCommunicator implements Communicator {
  readonly rank = 0;
  readonly size = 1;
  readonly backend = 'local' as const;
  allreduceMean(): void {}
  startAllreduceMean(): PendingAllreduce {
    return { wait() {} };
  }
  broadcast(): void {}
  allgather(x: Tensor): Tensor {
    return reshape(x, [1, x.shape[0]]);
  }
  async barrier(): Promise<void> {}
}

class MpiCommunicator implements Communicator {
  readonly backend = 'mpi' as const;
  nccl = false;
  constructor(readonly rank: number, readonly size: number) {}
  /** Notes NCCL: the native collective of device tensors joins it first (an error there is the collective's). */
  private onDevice(tensors: readonly Tensor[]): void {
    if (!this.nccl && tensors.some((t) => t.device === 'cuda')) this.nccl = true;
  }
  allreduceMean(tensors: readonly Tensor[]): void {
    this.onDevice(tensors);
    if (tensors.length) runOp('dist_allreduce_', [...tensors], { mean: 1 });
  }
  private nextBucket = 0;
  startAllreduceMean(tensors: readonly Tensor[]): PendingAllreduce {
    if (!tensors.length) return { wait() {} };
    this.onDevice(tensors);
    const bucket = this.nextBucket++ % 2 ** 30, held = [...tensors];
    runOp('dist_allreduce_start_', held, { bucket });
    let waited = false;
    return {
      wait() {
        if (waited) throw new Error(`allreduce bucket ${bucket}: wait() called twice`);
        waited = true;
        runOp('dist_allreduce_wait_', held, { bucket, mean: 1 });
      },
    };
  }
  broadcast(tensors: readonly Tensor[], root = 0): void {
    this.onDevice(tensors);
    if (tensors.length) runOp('dist_broadcast_', [...tensors], { root });
  }
  allgather(x: Tensor): Tensor {
    return runOp1('dist_allgather', [x]);
  }
  async barrier(): Promise<void> {
    const t = runOp1('dist_barrier', []);
    await t.data();
    t.dispose();
  }
}

/** The world size an MPI launcher (mpirun / Open MPI, MPICH's PMI) gave this process, or 0 when not launched by one. */
export function launchedWorldSize(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.OMPI_COMM_WORLD_SIZE ?? env.PMI_SIZE ?? env.PMIX_SIZE;
  const n = v === undefined ? 0 : Number(v);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

export const NO_MPI_HINT = 'this build of tdq-native has no MPI: install it (Debian: apt-get install libopenmpi-dev openmpi-bin) and rebuild (npm run build:native)';

let world: Promise<Communicator> | null = null;

/**
 * The communicator of this process: MPI when an MPI launcher started it (or
 * `mpi` is true), else the local one. Initialised once.
 */
export function initCommunicator(opts: { mpi?: boolean } = {}): Promise<Communicator> {
  if (world) return world;
  const wanted = opts.mpi ?? launchedWorldSize() > 0;
  world = (async () => {
    if (!wanted) return new LocalCommunicator();
    deterministicAllreduce();
    pinLocalDevice();
    const info = runOp1('dist_init', []);
    const [built, rank, size] = Array.from((await info.data()) as Int32Array);
    info.dispose();
    if (!built) {
      if (launchedWorldSize() > 1) throw new Error(`started by an MPI launcher with ${launchedWorldSize()} processes, but ${NO_MPI_HINT}`);
      return new LocalCommunicator();
    }
    return size > 1 ? new MpiCommunicator(rank, size) : new LocalCommunicator();
  })();
  return world;
}

/**
 * Open MPI settings of the ranks, set here before MPI_Init reads them.
 * Open MPI picks an allreduce algorithm by message size; its ring algorithms
 * sum an element in an order that depends on where the element falls in the
 * message, so gradient buckets (other messages) could differ in the last bits
 * from one allreduce of all gradients on 3 or more ranks. Rabenseifner's
 * algorithm (reduce-scatter by recursive halving, then allgather; recursive
 * doubling for short messages) sums every element in the same tree of ranks,
 * whatever the message, and moves as few bytes as the ring: chosen unless the
 * user chose an algorithm.
 */
export function deterministicAllreduce(env: NodeJS.ProcessEnv = process.env): void {
  // The communication thread waits in MPI for the other ranks while this
  // rank's backward pass computes: polling that yields the core costs the
  // compute far less than spinning (bench/results/ddp-cpu.md).
  env.OMPI_MCA_mpi_yield_when_idle ??= '1';
  if (env.OMPI_MCA_coll_tuned_allreduce_algorithm !== undefined) return;
  env.OMPI_MCA_coll_tuned_use_dynamic_rules = '1';
  env.OMPI_MCA_coll_tuned_allreduce_algorithm = '6';
}

/** A float32 (n) tensor of JS numbers (what ranks compare with allgather). */
export function scalars(values: readonly number[]): Tensor {
  return fromArray(Float32Array.from(values), [values.length]);
}
