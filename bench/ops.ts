// Benchmark of the GEMM-based ops (conv2d forward / backward-input /
// backward-weight, matmul) on the shapes of a 32x32 diffusion UNet, against
// PyTorch on the same shapes in the same run. Writes a markdown report.
//
//   node dist/bench/ops.js [--batch 16] [--threads <all CPUs>] [--reps 5] [--warmup 2] [--rounds 2]
//                          [--out bench/results/ops-cpu.md] [--no-torch]
//
// Both engines use --threads threads (default: every CPU, as os.cpu_count()).
//
// Each op is timed alone (inputs prepared beforehand, the native stream
// drained after each call); blocks of calls of ours and PyTorch's alternate
// so that a shared machine's load falls on both alike. Medians are reported.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { native } from '../src/tensor/native';
import { type Tensor, runOp, runOp1 } from '../src/tensor/tensor';
import { benchArgs, commonOptions } from './args';
import { lscpu } from './machine';
import { TorchServer } from './torch_client';

interface ConvCase {
  name: string;
  kind: 'conv_forward' | 'conv_backward_input' | 'conv_backward_weight';
  x: number[];
  w: number[];
  stride: number;
  padding: number;
  bias: boolean;
}
interface MatmulCase {
  name: string;
  kind: 'matmul';
  a: number[];
  b: number[];
}
type Case = ConvCase | MatmulCase;

const USAGE = 'node dist/bench/ops.js [--batch 16] [--threads <all CPUs>] [--reps 5] [--warmup 2] [--rounds 2] [--out bench/results/ops-cpu.md] [--no-torch]';
const OPTIONS = {
  batch: { type: 'string', value: 'N', default: '16', help: 'batch of the UNet shapes' },
  threads: commonOptions.threads(),
  ...commonOptions.repsWarmup(),
  rounds: { type: 'string', value: 'N', default: '2', help: 'alternating blocks of ours and PyTorch' },
  out: commonOptions.report('ops-cpu.md'),
  'no-torch': { type: 'boolean', help: 'time ours only' },
} as const;

function cases(batch: number): Case[] {
  const convs: [string, number[], number[], number, number][] = [
    ['3x3 64→64 @32x32', [batch, 64, 32, 32], [64, 64, 3, 3], 1, 1],
    ['3x3 128→128 @16x16', [batch, 128, 16, 16], [128, 128, 3, 3], 1, 1],
    ['3x3 256→256 @8x8', [batch, 256, 8, 8], [256, 256, 3, 3], 1, 1],
    ['3x3 s2 64→128 @32x32', [batch, 64, 32, 32], [128, 64, 3, 3], 2, 1],
    ['1x1 128→256 @16x16', [batch, 128, 16, 16], [256, 128, 1, 1], 1, 0],
  ];
  const out: Case[] = [];
  for (const [name, x, w, stride, padding] of convs)
    for (const kind of ['conv_forward', 'conv_backward_input', 'conv_backward_weight'] as const)
      out.push({ name: `${name} ${kind.replace('conv_', '')}`, kind, x, w, stride, padding, bias: true });
  out.push({ name: 'matmul (4096x64)·(64x192)', kind: 'matmul', a: [4096, 64], b: [64, 192] });
  out.push({ name: `matmul (${batch}*256x256)·(256x256)`, kind: 'matmul', a: [batch * 256, 256], b: [256, 256] });
  return out;
}

function flops(c: Case): number {
  if (c.kind === 'matmul') return 2 * c.a[0] * c.a[1] * c.b[1];
  const [N, C, H, W] = c.x, [O, , kh, kw] = c.w;
  const Ho = Math.floor((H + 2 * c.padding - kh) / c.stride) + 1, Wo = Math.floor((W + 2 * c.padding - kw) / c.stride) + 1;
  return 2 * N * O * C * kh * kw * Ho * Wo;
}

const randn = (shape: number[], seed: number) => runOp1('randn', [], { shape, seed });

/** A closure running the op once, on inputs made beforehand. */
function prepare(c: Case): { run: () => Tensor[]; inputs: Tensor[] } {
  if (c.kind === 'matmul') {
    const a = randn(c.a, 1), b = randn(c.b, 2);
    return { run: () => [runOp1('matmul', [a, b])], inputs: [a, b] };
  }
  const x = randn(c.x, 1), w = randn(c.w, 2), b = randn([c.w[0]], 3);
  const attrs = { stride: c.stride, padding: c.padding };
  const y = runOp1('conv2d_forward', [x, w, b], attrs);
  const gy = randn([...y.shape], 4);
  y.dispose();
  const inputs = [x, w, b, gy];
  switch (c.kind) {
    case 'conv_forward':
      return { run: () => [runOp1('conv2d_forward', [x, w, b], attrs)], inputs };
    case 'conv_backward_input':
      return { run: () => [runOp1('conv2d_backward_input', [gy, w], { ...attrs, input_shape: c.x })], inputs };
    case 'conv_backward_weight':
      return {
        run: () => runOp('conv2d_backward_weight', [gy, x], { ...attrs, kernel_size: [c.w[2], c.w[3]], bias: c.bias }),
        inputs,
      };
  }
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Times one case in `rounds` rounds; each round makes `reps` timed calls of
 * ours, then `reps` of PyTorch's (after warm-up calls), so both are measured
 * close together in time on a machine whose load changes. Whole blocks rather
 * than single calls alternate because PyTorch's OpenMP threads keep spinning
 * for a while after each call and would slow down a call of ours right after.
 */
async function timeCase(
  c: Case,
  reps: number,
  warmup: number,
  rounds: number,
  torch: TorchServer | null,
): Promise<{ ours: number; torch: number | null }> {
  const { run, inputs } = prepare(c);
  if (torch) await torch.call({ setup: c });
  native().syncBlocking();
  const ours: number[] = [], theirs: number[] = [];
  for (let round = 0; round < rounds; ++round) {
    for (let r = 0; r < warmup + reps; ++r) {
      const t0 = process.hrtime.bigint();
      const outs = run();
      native().syncBlocking();
      const t = Number(process.hrtime.bigint() - t0) / 1e6;
      for (const o of outs) o.dispose();
      if (r >= warmup) ours.push(t);
    }
    if (torch) theirs.push(...(await torch.call<{ ms: number[] }>({ run: c.name, n: warmup + reps })).ms.slice(warmup));
  }
  for (const t of inputs) t.dispose();
  return { ours: median(ours), torch: torch ? median(theirs) : null };
}

async function main(): Promise<void> {
  const { batch, reps, warmup, rounds, outFile, threads, noTorch } = benchArgs(USAGE, OPTIONS, (a) => ({
    batch: a.int('batch', 1), reps: a.int('reps', 1), warmup: a.int('warmup'), rounds: a.int('rounds', 1),
    outFile: path.resolve(a.str('out')), threads: a.int('threads', 1), noTorch: a.flag('no-torch'),
  }));
  // The engine sizes its thread pool from TDQ_NUM_THREADS when it loads (below).
  process.env.TDQ_NUM_THREADS = String(threads);
  const info = native().info();
  const torch = noTorch ? null : new TorchServer('torch_ops.py', threads, 'inherit');
  const all = cases(batch);
  const torchInfo = torch ? await torch.call<{ torch: string; threads: number }>({ info: true }) : null;

  const loadBefore = os.loadavg()[0];
  const ours: Record<string, number> = {}, theirs: Record<string, number | null> = {};
  for (const c of all) {
    const r = await timeCase(c, reps, warmup, rounds, torch);
    ours[c.name] = r.ours;
    theirs[c.name] = r.torch;
    const tt = r.torch === null ? '' : `   torch ${r.torch.toFixed(2).padStart(8)} ms   ratio ${(r.ours / r.torch).toFixed(2)}`;
    console.log(`${c.name.padEnd(42)} ${r.ours.toFixed(2).padStart(8)} ms ${(flops(c) / r.ours / 1e6).toFixed(1).padStart(7)} GFLOP/s${tt}`);
  }
  await torch?.close();

  const lines: string[] = [];
  lines.push('# CPU op benchmark: conv2d and matmul vs PyTorch', '');
  lines.push(`- command: \`node dist/bench/ops.js${process.argv.slice(2).map((a) => ' ' + a).join('')}\``);
  lines.push(`- date: ${new Date().toISOString()}`);
  lines.push(`- machine: ${lscpu('Model name')}, ${os.cpus().length} logical CPUs (${lscpu('Core(s) per socket')} cores per socket, ${lscpu('Socket(s)')} socket(s))`);
  lines.push(`- load average (1 min) before / after the run: ${loadBefore.toFixed(2)} / ${os.loadavg()[0].toFixed(2)} (the benchmark itself accounts for about 1; more means other processes were running)`);
  lines.push(`- tdq-native: ${info.threads} threads, CPU level ${info.cpuLevel}`);
  lines.push(
    torchInfo
      ? `- PyTorch ${torchInfo.torch}: ${torchInfo.threads} threads (torch.set_num_threads(${threads}), OMP_NUM_THREADS and OPENBLAS_NUM_THREADS=${threads}; conv2d through oneDNN, matmul through OpenBLAS)`
      : '- PyTorch: not run (--no-torch)',
  );
  lines.push(`- batch ${batch}; each op timed alone (bias included), median of ${rounds} rounds x ${reps} calls per engine;`);
  lines.push(`  a round times ${warmup} warm-up + ${reps} calls of ours, then the same of PyTorch's, so both see similar load`);
  const busy = Math.max(loadBefore, os.loadavg()[0]) > 1.5;
  if (busy && threads > 1)
    lines.push(
      '',
      `**The machine was busy (load average above 1.5 on ${os.cpus().length} CPUs): multi-threaded timings are not`,
      "reliable. PyTorch's OpenMP threads wait for each other at every barrier and stall whenever one of them is",
      'descheduled; rerun on an idle machine, or compare with --threads 1.**',
    );
  lines.push('');
  lines.push('| op | ours (ms) | ours GFLOP/s | torch (ms) | torch GFLOP/s | ours / torch |');
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: |');
  let logSum = 0, count = 0;
  for (const c of all) {
    const o = ours[c.name], t = theirs[c.name];
    const gf = (ms: number) => (flops(c) / ms / 1e6).toFixed(1);
    if (t) (logSum += Math.log(o / t)), ++count;
    lines.push(`| ${c.name} | ${o.toFixed(2)} | ${gf(o)} | ${t ? t.toFixed(2) : '–'} | ${t ? gf(t) : '–'} | ${t ? (o / t).toFixed(2) : '–'} |`);
  }
  if (count) lines.push('', `Geometric mean of ours / torch: ${Math.exp(logSum / count).toFixed(2)}`);
  lines.push('');
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, lines.join('\n'));
  console.log(`wrote ${outFile}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
