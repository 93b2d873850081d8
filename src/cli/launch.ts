// `--nproc N`: runs the same command on N ranks under MPI's launcher
// (mpirun -np N node tdq-native ...), so users need not write the mpirun
// line themselves; the seed's `--gpus 0,1 --accelerator ddp` map onto it.
import { spawn, spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';

import { type Communicator, NO_MPI_HINT, initCommunicator, launchedWorldSize } from '../dist/communicator';
import { native } from '../tensor/native';
import { CliError, CliExit } from './index';

export interface LaunchArgs {
  nproc?: number;
  gpus?: string;
  accelerator?: string;
}

/** The process count asked for: --nproc, or the length of the seed's --gpus list ('0,1,2,3' -> 4; '0,' -> 1). */
export function requestedProcs(a: LaunchArgs): number {
  if (a.accelerator !== undefined && a.accelerator !== 'ddp' && a.accelerator !== 'cpu')
    throw new CliError(`--accelerator ${a.accelerator}: only ddp (data-parallel over MPI ranks) is available`);
  let n = 1;
  if (a.gpus !== undefined) {
    const ids = String(a.gpus).split(',').map((s) => s.trim()).filter((s) => s !== '');
    if (!ids.length || !ids.every((s) => /^\d+$/.test(s))) throw new CliError(`--gpus ${a.gpus}: expected a comma-separated list of device ids, e.g. 0,1`);
    n = ids.length;
  }
  if (a.nproc !== undefined) {
    if (!Number.isInteger(a.nproc) || a.nproc < 1 || a.nproc > 4096) throw new CliError(`--nproc must be an integer from 1 to 4096, got ${a.nproc}`);
    if (a.gpus !== undefined && a.nproc !== n) throw new CliError(`--nproc ${a.nproc} and --gpus ${a.gpus} (${n} devices) disagree`);
    n = a.nproc;
  }
  return n;
}

/** argv without the launch flags (and their values). */
export function withoutLaunchFlags(argv: readonly string[]): string[] {
  const flags = new Set(['--nproc', '--gpus', '--accelerator']);
  const out: string[] = [];
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const name = a.split('=')[0];
    if (flags.has(name)) {
      if (!a.includes('=')) i += 1;
      continue;
    }
    out.push(a);
  }
  return out;
}

/**
 * When N > 1 ranks are asked for and this process was not started by an MPI
 * launcher: runs mpirun with this command on N ranks and resolves with its
 * exit code. Otherwise null (run here).
 */
export async function launchRanks(a: LaunchArgs, argv: readonly string[] = process.argv.slice(2)): Promise<number | null> {
  const n = requestedProcs(a);
  if (n === 1 || launchedWorldSize() > 0) return null;
  if (!native().info().mpi) throw new CliError(`--nproc ${n}: ${NO_MPI_HINT}`);
  const mpirun = process.env.TDQ_MPIRUN ?? 'mpirun';
  if (spawnSync(mpirun, ['--version'], { stdio: 'ignore' }).status !== 0)
    throw new CliError(`--nproc ${n}: ${mpirun} not found; install MPI's launcher (Debian: apt-get install openmpi-bin) or start the ranks yourself with mpirun -np ${n} npx tdq-native ...`);
  // One engine thread per core, split between the ranks, unless set.
  const threads = process.env.TDQ_NUM_THREADS ?? String(Math.max(1, Math.floor(os.availableParallelism() / n)));
  const args = ['-np', String(n), '--oversubscribe', '-x', `TDQ_NUM_THREADS=${threads}`];
  if (process.getuid?.() === 0) args.push('--allow-run-as-root');
  args.push(process.execPath, path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js'), ...withoutLaunchFlags(argv));
  return new Promise((resolve, reject) => {
    const child = spawn(mpirun, args, { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    process.on('SIGINT', forward).on('SIGTERM', forward);
    child.on('error', reject);
    child.on('exit', (code, sig) => {
      process.off('SIGINT', forward).off('SIGTERM', forward);
      resolve(code ?? (sig === 'SIGKILL' ? 137 : 1));
    });
  });
}

/** The yargs options of the launch flags; `nprocDescribe` says what the ranks split. */
export function launchOptions(nprocDescribe: string) {
  return {
    nproc: { type: 'number', describe: nprocDescribe },
    gpus: { type: 'string', describe: "the seed's device list (e.g. 0,1,2,3): as many ranks as devices" },
    accelerator: { type: 'string', describe: "the seed's ddp: data-parallel ranks (the only mode)" },
  } as const;
}

/** train's launch arguments: the launch flags and the gradient bucket size. */
export interface TrainLaunchArgs extends LaunchArgs {
  bucketMb?: number;
}

/** train's yargs options: the launch flags and --bucket-mb. */
export function trainLaunchOptions(nprocDescribe: string) {
  return {
    ...launchOptions(nprocDescribe),
    'bucket-mb': { type: 'number', describe: 'data-parallel: gradient buckets of about this many MiB, each allreduced while the backward pass goes on (default 25, the first at most 1, as PyTorch DDP); 0: one allreduce after the backward pass' },
  } as const;
}

/** --bucket-mb checked: undefined (the default) or a number >= 0. */
export function bucketMbArg(a: TrainLaunchArgs): number | undefined {
  if (a.bucketMb === undefined) return undefined;
  if (!Number.isFinite(a.bucketMb) || a.bucketMb < 0) throw new CliError(`--bucket-mb must be a number of MiB >= 0 (0: no overlap), got ${a.bucketMb}`);
  return a.bucketMb;
}

/**
 * A command's start under --nproc: in the process the user started, runs the
 * ranks under mpirun and returns null when they are done (a CliExit with
 * their exit code if they failed); in a rank (or with one process), this
 * process's communicator.
 */
export async function rankOrLaunch(a: LaunchArgs): Promise<Communicator | null> {
  const launched = await launchRanks(a);
  if (launched === null) return initCommunicator();
  if (launched !== 0) throw new CliExit(launched);
  return null;
}
