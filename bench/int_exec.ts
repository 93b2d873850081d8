// Whole-model forward of the shipped model in three executions: fp32, the
// W8A8-quantized model fake-quantized (float ops on fake-quantized tensors),
// and the same quantized model in integer arithmetic (QuantizedModel.setExec
// 'int': quantize_act + qconv2d / qlinear, weights packed once), for static
// LSQ W8A8 and TDQ W8A8 reading its step table. Writes a markdown report.
//
//   node dist/bench/int_exec.js [--batch 8] [--reps 5] [--warmup 2] [--rounds 3]
//                               [--calib-samples 4] [--out bench/results/int-exec.md]
//                               [--profile bench/results/int-exec-profile.md]
//
// Every way runs model.forward(x, t) on the same x (batch, C, H, W) and random
// integer timesteps, the native stream drained after each call; the ways
// alternate in blocks of `reps` calls, `rounds` times, so a shared machine's
// load falls on all alike; medians (and fastest calls) are reported. Switching
// fake <-> int frees the packed weights, so each block's warm-up calls include
// one repack (not timed).
//
// --profile FILE: instead of timing, runs each way `reps` times with the
// engine's op profiler on (Stream::set_profiling: each kernel's own time,
// measured on the stream thread) and writes per-op milliseconds and calls per
// forward; the rest of the wall time is dispatch (JS, N-API, allocation).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadModel } from '../src/models/load';
import { DEFAULT_MODEL } from '../src/pipeline';
import { calibrate } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import type { QuantizedModel } from '../src/quant/quantize_model';
import { noGrad } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { tidy } from '../src/tensor/scope';
import { type Tensor, fromArray, runOp1 } from '../src/tensor/tensor';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function lscpu(field: string): string {
  try {
    const line = execFileSync('lscpu', { encoding: 'utf8' }).split('\n').find((l) => l.startsWith(`${field}:`));
    return line ? line.slice(field.length + 1).trim() : '?';
  } catch {
    return '?';
  }
}

async function main(): Promise<void> {
  const batch = Number(arg('batch', '8')), reps = Number(arg('reps', '5')), warmup = Number(arg('warmup', '2'));
  const rounds = Number(arg('rounds', '3')), calibSamples = Number(arg('calib-samples', '4'));
  const outFile = path.resolve(arg('out', path.join(packageRoot, 'bench', 'results', 'int-exec.md')));
  const info = native().info();
  const load0 = os.loadavg()[0];
  const t0 = Date.now();

  const fp = await loadModel(DEFAULT_MODEL);
  const cfgModel = fp.config.model.params as { timesteps: number; channels: number; image_size: number };
  const schedule = { kind: 'linear' as const, timesteps: cfgModel.timesteps };
  const quantized: Record<string, QuantizedModel> = {};
  const owners = [fp];
  for (const [name, useDynamic] of [['static W8A8', false], ['TDQ W8A8', true]] as const) {
    const m = await loadModel(DEFAULT_MODEL);
    owners.push(m);
    const qm = await calibrate(m.model, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic }), { schedule, steps: 10, nSamples: calibSamples, seed: 1, method: 'mse', fitIters: 200 });
    if (useDynamic) {
      qm.buildTable();
      qm.useTable(true);
    }
    qm.eval();
    quantized[name] = qm;
  }
  fp.model.eval();

  const shape = [batch, cfgModel.channels, cfgModel.image_size, cfgModel.image_size];
  const x = runOp1('randn', [], { shape, seed: 1 });
  const t = fromArray(Array.from({ length: batch }, (_, i) => (i * 131 + 7) % cfgModel.timesteps), [batch]);
  type Way = { name: string; run: () => Tensor; before?: () => void };
  const ways: Way[] = [{ name: 'fp32', run: () => fp.model.forward(x, t) }];
  for (const [name, qm] of Object.entries(quantized)) {
    ways.push({ name: `${name} fake`, before: () => qm.setExec('fake'), run: () => qm.forward(x, t) });
    ways.push({ name: `${name} int`, before: () => qm.setExec('int'), run: () => qm.forward(x, t) });
  }
  const profileFile = arg('profile', '');
  if (profileFile) {
    writeProfile(path.resolve(profileFile), ways, { warmup, reps, batch, load0, t0 });
    x.dispose();
    t.dispose();
    for (const o of owners) o.dispose();
    return;
  }
  const times = new Map<string, number[]>(ways.map((w) => [w.name, []]));
  // CPU time of the process (all threads) per forward: on a shared machine the
  // wall time includes the time the scheduler gave to others, CPU time mostly not.
  const cpu = new Map<string, number[]>(ways.map((w) => [w.name, []]));
  for (let round = 0; round < rounds; ++round)
    for (const w of ways) {
      w.before?.();
      for (let r = 0; r < warmup + reps; ++r) {
        const c0 = process.cpuUsage();
        const s = process.hrtime.bigint();
        const y = noGrad(() => tidy(() => w.run()));
        native().syncBlocking();
        const ms = Number(process.hrtime.bigint() - s) / 1e6;
        const cu = process.cpuUsage(c0);
        y.dispose();
        if (r >= warmup) {
          times.get(w.name)!.push(ms);
          cpu.get(w.name)!.push((cu.user + cu.system) / 1e3);
        }
      }
    }
  const fpMed = median(times.get('fp32')!), fpLo = Math.min(...times.get('fp32')!), fpCpu = median(cpu.get('fp32')!);
  const rows = ways.map((w) => {
    const v = times.get(w.name)!, m = median(v), lo = Math.min(...v), c = median(cpu.get(w.name)!);
    const row = `| ${w.name} | ${m.toFixed(1)} | ${lo.toFixed(1)} | ${c.toFixed(1)} | ${(fpMed / m).toFixed(2)} | ${(fpLo / lo).toFixed(2)} | ${(fpCpu / c).toFixed(2)} |`;
    console.log(row);
    return row;
  });
  const ratio = (a: string, b: string, f: (v: number[]) => number, m: Map<string, number[]>) => f(m.get(a)!) / f(m.get(b)!);
  const tdqVsStatic = ways.some((w) => w.name === 'TDQ W8A8 int')
    ? `- TDQ int / static int: ${ratio('TDQ W8A8 int', 'static W8A8 int', median, times).toFixed(3)} (median wall), ${ratio('TDQ W8A8 int', 'static W8A8 int', (v) => Math.min(...v), times).toFixed(3)} (fastest), ${ratio('TDQ W8A8 int', 'static W8A8 int', median, cpu).toFixed(3)} (median CPU)`
    : '';
  const load1 = os.loadavg()[0];
  const f = info.cpuFeatures as Record<string, boolean>;
  const report = [
    '# Whole-model forward: fp32 vs fake-quantized vs integer execution (shipped model, CPU)',
    '',
    `- command: \`node dist/bench/int_exec.js ${process.argv.slice(2).join(' ')}\``.replace(/ `$/, '`'),
    `- date: ${new Date(t0).toISOString()}, ${((Date.now() - t0) / 1000).toFixed(0)} s`,
    `- machine: ${lscpu('Model name')}, ${os.cpus().length} logical CPUs; avx512vnni ${f.avx512vnni}, amxInt8 ${f.amxInt8}`,
    `- load average (1 min) before / after: ${load0.toFixed(2)} / ${load1.toFixed(2)} (the benchmark itself accounts for about 1)`,
    `- tdq-native: ${info.threads} threads, cpu level ${info.cpuLevel}, int8 kernel ${info.int8Kernel}`,
    `- model: ${path.basename(DEFAULT_MODEL)} (${shape.slice(1).join('x')}), batch ${batch}; quantized W8A8 by calibrate (mse, ${calibSamples} samples), paper's full-precision layers kept`,
    `- median of ${rounds} rounds x ${reps} forwards per way (after ${warmup} warm-up forwards per block), the ways interleaved in blocks`,
    '',
    '| execution | median (ms) | fastest (ms) | median CPU (ms, all threads) | fp32 / this (median) | fp32 / this (fastest) | fp32 / this (CPU) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    tdqVsStatic,
    '',
  ].join('\n');
  x.dispose();
  t.dispose();
  for (const o of owners) o.dispose();
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, report);
  console.log(`wrote ${outFile}`);
}

function writeProfile(
  file: string,
  ways: { name: string; run: () => Tensor; before?: () => void }[],
  o: { warmup: number; reps: number; batch: number; load0: number; t0: number },
): void {
  const sections: string[] = [];
  for (const w of ways) {
    w.before?.();
    for (let r = 0; r < o.warmup; ++r) {
      noGrad(() => tidy(() => w.run())).dispose();
      native().syncBlocking();
    }
    native().setProfiling(true);
    const s = process.hrtime.bigint();
    for (let r = 0; r < o.reps; ++r) {
      noGrad(() => tidy(() => w.run())).dispose();
      native().syncBlocking();
    }
    const wall = Number(process.hrtime.bigint() - s) / 1e6 / o.reps;
    const prof = native().profile();
    native().setProfiling(false);
    const ops = Object.entries(prof).map(([op, v]) => ({ op, calls: v.calls / o.reps, ms: (v.seconds * 1e3) / o.reps }));
    ops.sort((a, b) => b.ms - a.ms);
    const inOps = ops.reduce((a, v) => a + v.ms, 0), calls = ops.reduce((a, v) => a + v.calls, 0);
    const line = `${w.name}: wall ${wall.toFixed(1)} ms / forward, in kernels ${inOps.toFixed(1)} ms (${calls.toFixed(0)} op calls), outside kernels ${(wall - inOps).toFixed(1)} ms`;
    console.log(line);
    sections.push(`## ${w.name}`, '', line, '', '| op | ms / forward | calls / forward | share of wall |', '| --- | ---: | ---: | ---: |');
    for (const v of ops) sections.push(`| ${v.op} | ${v.ms.toFixed(2)} | ${v.calls.toFixed(0)} | ${((100 * v.ms) / wall).toFixed(1)} % |`);
    sections.push('');
  }
  const info = native().info();
  const report = [
    '# Per-op profile of the whole-model forward (shipped model, CPU)',
    '',
    `- command: \`node dist/bench/int_exec.js ${process.argv.slice(2).join(' ')}\``,
    `- date: ${new Date(o.t0).toISOString()}; load average (1 min) before / after: ${o.load0.toFixed(2)} / ${os.loadavg()[0].toFixed(2)}`,
    `- tdq-native: ${info.threads} threads, cpu level ${info.cpuLevel}, int8 kernel ${info.int8Kernel}; batch ${o.batch}, ${o.reps} profiled forwards per way after ${o.warmup} warm-up`,
    '- per op: the kernel time measured on the engine stream (Stream::set_profiling); "outside kernels" is the rest of the wall time (JS, N-API dispatch, allocation, waiting)',
    '',
    ...sections,
  ].join('\n');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, report);
  console.log(`wrote ${file}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
