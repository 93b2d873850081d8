// Data-parallel scaling on this machine: training images/s of 1 rank x 1
// engine thread, 1 rank x 2 threads and 2 ranks x 1 thread (the fmnist-small
// UNet on synthetic 32x32 data, the same global batch), the 2 ranks with one
// allreduce after the backward pass (--bucket-mb 0) and with buckets
// allreduced during it (the default 25 MiB, and 1 MiB); sampling images/s the
// same three ways (the shipped model, DDIM, `sample --nproc`); the allreduce
// time of one step's gradients against the step time; whether a nonblocking
// allreduce progresses while a rank computes (bench/ddp_progress.cpp); and a
// projection to 8 and 64 ranks on stated interconnects.
//   node dist/bench/ddp.js [--steps 12] [--batch 32] [--samples 32] [--rounds 2] [--out bench/results/ddp-cpu.md]   (--help)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { buildUNet } from '../src/models/diffusion';
import { packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { BenchArgsError, benchArgs, commonOptions } from './args';

const USAGE = 'node dist/bench/ddp.js [--steps 12] [--batch 32] [--samples 32] [--rounds 2] [--out bench/results/ddp-cpu.md]';
const OPTIONS = {
  steps: { type: 'string', value: 'N', default: '12', help: 'training steps per run (images/s: median over steps 3.., all steps when fewer)' },
  batch: { type: 'string', value: 'N', default: '32', help: 'global training batch (even: 2 ranks split it)' },
  samples: { type: 'string', value: 'N', default: '32', help: 'images per sampling run' },
  rounds: { type: 'string', value: 'N', default: '2', help: 'interleaved rounds of every layout' },
  out: commonOptions.report('ddp-cpu.md'),
} as const;

const { steps, batch, samples: sampleN, rounds, out } = benchArgs(USAGE, OPTIONS, (a) => {
  const b = a.int('batch', 2);
  if (b % 2 !== 0) throw new BenchArgsError(`--batch: expected an even integer (2 ranks split it), got '${a.str('batch')}'`);
  return { steps: a.int('steps', 1), batch: b, samples: a.int('samples', 1), rounds: a.int('rounds', 1), out: path.resolve(a.str('out')) };
});
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-ddp-bench-'));
const bin = path.join(packageRoot, 'bin', 'tdq-native.js');
const root = process.getuid?.() === 0 ? ['--allow-run-as-root'] : [];

// fmnist-small's model on synthetic data (no dataset needed).
const base = fs.readFileSync(path.join(packageRoot, 'configs', 'fmnist-small.yaml'), 'utf8');
const model = base.slice(base.indexOf('model:'), base.indexOf('\ndata:'));
const cfgFile = path.join(work, 'ddp.yaml');
fs.writeFileSync(cfgFile, `${model}\ndata:\n  target: tdq_native.data.Synthetic\n  params: {count: 4096, kind: shapes}\ntraining:\n  batch_size: ${batch}\n  max_steps: ${steps}\n  log_every: 1\n  checkpoint_every: 100000\n  ema: {enabled: false}\n`);

interface Layout { ranks: number; threads: number; bucketMb?: number }
const label = (l: Layout) => `${l.ranks} x ${l.threads}${l.bucketMb === undefined ? '' : l.bucketMb === 0 ? ', one allreduce after backward' : `, ${l.bucketMb} MiB buckets during backward`}`;

/** The allreduce line a data-parallel run prints: ms per step on the communication thread and waited for. */
const comm: Record<string, { busy: number; waited: number }[]> = {};
const bucketCount: Record<string, number> = {};

function trainRun(l: Layout, name: string): number {
  const extra = l.bucketMb === undefined ? [] : ['--bucket-mb', String(l.bucketMb)];
  const r = spawnSync(process.execPath, [bin, 'train', '--base', cfgFile, '--name', name, '--logdir', work, '--nproc', String(l.ranks), ...extra], {
    encoding: 'utf8', env: { ...process.env, TDQ_NUM_THREADS: String(l.threads) },
  });
  if (r.status !== 0) throw new Error(`train (${label(l)}) failed:\n${r.stdout}\n${r.stderr}`);
  const m = /allreduce per step: [\d.]+ calls, ([\d.]+) ms on the communication thread, ([\d.]+) ms waited for/.exec(r.stdout);
  if (m) (comm[label(l)] ??= []).push({ busy: Number(m[1]), waited: Number(m[2]) });
  const nb = /\((\d+) gradient buckets/.exec(r.stdout);
  if (nb) bucketCount[label(l)] = Number(nb[1]);
  const recs = fs.readFileSync(path.join(work, name, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; images_per_s: number });
  const timed = recs.filter((x) => x.step > 2); // the first two steps warm up
  const ips = (timed.length ? timed : recs).map((x) => x.images_per_s).sort((a, b) => a - b);
  return ips[ips.length >> 1];
}

function sampleRun(l: Layout, name: string): number {
  const r = spawnSync(process.execPath, [bin, 'sample', '--n-samples', String(sampleN), '--batch-size', '8', '--custom-steps', '10', '--no-progress', '--no-grid', '--outdir', path.join(work, name), '--nproc', String(l.ranks)], {
    encoding: 'utf8', env: { ...process.env, TDQ_NUM_THREADS: String(l.threads) },
  });
  if (r.status !== 0) throw new Error(`sample (${label(l)}) failed:\n${r.stdout}\n${r.stderr}`);
  const m = /([\d.]+) images\/s/.exec(r.stdout);
  if (!m) throw new Error(`no images/s in: ${r.stdout}`);
  return Number(m[1]);
}

/** bench/ddp_progress.cpp built with mpicxx and run on 2 ranks, or null without mpicxx. */
function progressRun(floats: number): Record<string, unknown> | null {
  const exe = path.join(work, 'ddp_progress');
  const cc = spawnSync('mpicxx', ['-O2', '-std=c++17', '-pthread', path.join(packageRoot, 'bench', 'ddp_progress.cpp'), '-o', exe], { encoding: 'utf8' });
  if (cc.status !== 0) return null;
  const r = spawnSync('mpirun', [...root, '--oversubscribe', '-np', '2', exe, String(floats), '60', '15'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ddp_progress failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

function allreduceMs(floats: number): number {
  const r = spawnSync('mpirun', [...root, '--oversubscribe', '-np', '2', '-x', 'TDQ_NUM_THREADS=1', process.execPath, path.join(packageRoot, 'dist', 'bench', 'ddp_allreduce.js'), '--floats', String(floats), '--rounds', '30'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`allreduce timing failed:\n${r.stderr}`);
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { medianMs: number }).medianMs;
}

const params = buildUNet(loadConfig(cfgFile).config.model.params.unet_config, new Generator(0)).parameters().reduce((a, p) => a + p.size, 0);
const trainLayouts: Layout[] = [
  { ranks: 1, threads: 1 },
  { ranks: 1, threads: 2 },
  { ranks: 2, threads: 1, bucketMb: 0 },
  { ranks: 2, threads: 1, bucketMb: 25 },
  { ranks: 2, threads: 1, bucketMb: 1 },
];
const sampleLayouts: Layout[] = [{ ranks: 1, threads: 1 }, { ranks: 1, threads: 2 }, { ranks: 2, threads: 1 }];
const train: number[][] = trainLayouts.map(() => []), samp: number[][] = sampleLayouts.map(() => []);
const loadStart = os.loadavg().map((v) => v.toFixed(2)).join(' ');
for (let r = 0; r < rounds; ++r) {
  trainLayouts.forEach((l, i) => train[i].push(trainRun(l, `t${i}-${r}`)));
  sampleLayouts.forEach((l, i) => samp[i].push(sampleRun(l, `s${i}-${r}`)));
}
const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
const ar = allreduceMs(params + 2);
const progress = progressRun(params);
const ips1 = med(train[0]), ips2 = med(train[2]);
const stepMs2 = (batch / ips2) * 1000;
const bytes = 4 * (params + 2);

// Projection: per-rank compute of a fixed global batch shrinks as 1/p; a ring
// allreduce moves 2(p-1)/p of the message per rank with 2(p-1) latency hops.
const compute1 = (batch / ips1) * 1000; // ms per step on one rank
const nets = [
  { name: '10 GbE (1.25 GB/s, 50 us)', bw: 1.25e9, lat: 50e-6 },
  { name: 'InfiniBand HDR (25 GB/s, 2 us)', bw: 25e9, lat: 2e-6 },
];
const proj = (p: number, n: { bw: number; lat: number }) => {
  const comm = (2 * (p - 1) / p) * bytes / n.bw * 1000 + 2 * (p - 1) * n.lat * 1000;
  const step = compute1 / p + comm;
  const overlapped = Math.max(compute1 / p, compute1 / p / 3 + comm);
  return { comm, eff: compute1 / p / step, effOverlap: compute1 / p / overlapped };
};
const load = os.loadavg().map((v) => v.toFixed(2)).join(' ');
const cpu = os.cpus()[0]?.model ?? 'unknown';
const row = (l: Layout, v: number[], base: number, digits: number) => `| ${label(l)} | ${v.map((x) => x.toFixed(digits)).join(', ')} | ${med(v).toFixed(digits)} | ${(med(v) / base).toFixed(2)} |`;
const commRow = (l: Layout) => {
  const c = comm[label(l)] ?? [];
  return `| ${label(l)} | ${c.map((x) => x.busy.toFixed(0)).join(', ')} | ${c.map((x) => x.waited.toFixed(0)).join(', ')} |`;
};
const gain = (i: number) => ((med(train[i]) / med(train[2]) - 1) * 100).toFixed(1);
const lines = [
  '# Data-parallel scaling (MPI, CPU engine)',
  '',
  `Command: \`node dist/bench/ddp.js --steps ${steps} --batch ${batch} --rounds ${rounds}\`; ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC; ${cpu}, ${os.availableParallelism()} cores, shared with other users' jobs: load average ${loadStart} at the start, ${load} at the end (1, 5, 15 min). With the cores this loaded, every number below is a lower bound and the differences between layouts carry the noise of the other jobs (compare the rounds).`,
  `Model: fmnist-small's UNet (${(params / 1e6).toFixed(2)} M parameters) on synthetic 1x32x32 data, global batch ${batch}, ${rounds} interleaved rounds, median images/s over steps 3..${steps}. Layout: ranks x engine threads per rank.`,
  '',
  '| layout | images/s (rounds) | median | vs 1 x 1 |',
  '|---|---|---|---|',
  ...trainLayouts.map((l, i) => row(l, train[i], ips1, 1)),
  '',
  `Overlap: buckets allreduced during the backward pass against one allreduce after it, on 2 ranks: ${gain(3)}% images/s with the default buckets (25 MiB, the first 1 MiB: ${bucketCount[label(trainLayouts[3])]} buckets for these ${(bytes / 2 ** 20).toFixed(2)} MiB of gradients), ${gain(4)}% with 1 MiB buckets (${bucketCount[label(trainLayouts[4])]}). What each run printed at its end, per step (rounds): the time the communication thread spent in allreduces (it includes waiting for the other rank: the ranks drift apart on loaded cores) and the part the stream waited for (not hidden by the backward pass):`,
  '',
  '| layout | communication thread ms/step | waited for ms/step |',
  '|---|---|---|',
  ...trainLayouts.filter((l) => l.ranks > 1).map(commRow),
  '',
  `Sampling: \`tdq-native sample --n-samples ${sampleN} --batch-size 8 --custom-steps 10 --nproc R\` (the shipped model, DDIM; the ranks split the batches; images/s as the command reports it, loading excluded):`,
  '',
  '| layout | images/s (rounds) | median | vs 1 x 1 |',
  '|---|---|---|---|',
  ...sampleLayouts.map((l, i) => row(l, samp[i], med(samp[0]), 2)),
  '',
  `Gradient message per step and rank: ${(bytes / 2 ** 20).toFixed(2)} MiB. Allreduce of it on 2 ranks of this machine (shared memory): ${ar.toFixed(2)} ms median, ${((ar / stepMs2) * 100).toFixed(1)}% of a 2-rank step (${stepMs2.toFixed(0)} ms, one allreduce after backward).`,
  '',
  ...(progress
    ? [
        `Progress of a nonblocking allreduce (bench/ddp_progress.cpp, 2 ranks, the same ${(bytes / 2 ** 20).toFixed(2)} MiB against 60 memory-bound ~1 ms ops, median of 15 interleaved rounds; Open MPI 4.1 has no asynchronous progress thread, "OMPI progress: no" in ompi_info). Hidden: how much of compute + allreduce (each measured alone) the method saves, as a share of the allreduce; 100% = fully overlapped:`,
        '',
        '| method | ms | hidden |',
        '|---|---|---|',
        `| compute alone | ${progress.computeMs} | |`,
        `| MPI_Allreduce alone | ${progress.allreduceMs} | |`,
        ...([['compute, then MPI_Allreduce', 'serialMs'], ['MPI_Iallreduce, compute, MPI_Wait', 'iallreduceMs'], ['MPI_Iallreduce, compute with MPI_Test after each op, MPI_Wait', 'iallreduceTestMs'], ['MPI_Allreduce on a communication thread during the compute (what training does)', 'threadMs']] as const).map(([what, key]) => {
          const c = progress.computeMs as number, a = progress.allreduceMs as number, t = progress[key] as number;
          return `| ${what} | ${t} | ${(((c + a - t) / a) * 100).toFixed(0)}% |`;
        }),
        '',
      ]
    : ['(mpicxx not found: the progress measurement of bench/ddp_progress.cpp was skipped.)', '']),
  `Projection for a fixed global batch of ${batch} from the measured 1 x 1 step (${compute1.toFixed(0)} ms): compute ${compute1.toFixed(0)}/p ms per rank, ring allreduce 2(p-1)/p x ${(bytes / 2 ** 20).toFixed(2)} MiB / bandwidth + 2(p-1) x latency; without overlap the step is compute + allreduce; with buckets during the backward pass (taken as 2/3 of the compute) at best max(compute, forward + allreduce):`,
  '',
  '| interconnect | ranks | allreduce ms | efficiency, no overlap | efficiency, overlap (bound) |',
  '|---|---|---|---|---|',
  ...nets.flatMap((n) => [8, 64].map((p) => {
    const r = proj(p, n);
    return `| ${n.name} | ${p} | ${r.comm.toFixed(2)} | ${(r.eff * 100).toFixed(0)}% | ${(r.effOverlap * 100).toFixed(0)}% |`;
  })),
  '',
  `At this model size a global batch of ${batch} leaves ${(batch / 64).toFixed(1)} images per rank at 64 ranks: scale the global batch with the ranks (the seed trains with batch 96+ per GPU) to keep efficiency; per-rank compute then stays ${compute1.toFixed(0)} ms x (per-rank batch / ${batch}).`,
  '',
];
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, lines.join('\n'));
console.log(lines.join('\n'));
fs.rmSync(work, { recursive: true, force: true });
