// Whole-model forward of the shipped model in three executions: fp32, the
// W8A8-quantized model fake-quantized (float ops on fake-quantized tensors),
// and the same quantized model in integer arithmetic (QuantizedModel.setExec
// 'int': quantize_act + qconv2d / qlinear, weights packed once), for static
// LSQ W8A8 and TDQ W8A8 reading its step table. Writes a markdown report.
//
//   node dist/bench/int_exec.js [--case fmnist-b8|ddpm-b8|churches-b1] [--batch 8] [--reps 5] [--warmup 2]
//                               [--rounds 3] [--calib-samples 4] [--ways static,tdq int]
//                               [--out bench/results/int-exec.md]
//                               [--profile bench/results/int-exec-profile.md]
//
// --case: fmnist-b8 (default) is the shipped model; ddpm-b8 and churches-b1 are
// the DDPM CIFAR-10 UNet (configs/ddpm-cifar10.yaml) and the LDM churches UNet
// (configs/ldm-churches.yaml) with random weights (seed 0; the zero-initialized
// output convs drawn too), calibrated W8A8 on one short DDIM trajectory. Their
// float weights and calibrated quantized models are written once under
// $TDQ_BENCH_CACHE (default /tmp/tdq-int-bench) and read back by later runs, so
// two builds (TDQ_ADDON_PATH) time the same models. --batch overrides the case's.
// --ways: fp32 and the executions whose names start with one of these
// (case-insensitive, 'W8A8' left out: 'static int,tdq int').
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
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors';
import { type Denoiser, buildUNet } from '../src/models/diffusion';
import { loadModel } from '../src/models/load';
import { loadQuantized } from '../src/quant/quantize_model';
import { scale } from '../src/tensor/ops/elementwise';
import { Generator } from '../src/tensor/random';
import { DEFAULT_MODEL } from '../src/pipeline';
import { calibrate } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import type { QuantizedModel } from '../src/quant/quantize_model';
import { noGrad } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { tidy } from '../src/tensor/scope';
import { type Tensor, fromArray, runOp1 } from '../src/tensor/tensor';
import { BenchArgsError, benchArgs, commonOptions } from './args';
import { lscpu } from './machine';

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

interface BenchModel {
  label: string;
  shape: [number, number, number];
  timesteps: number;
  fp: { forward(x: Tensor, t: Tensor): Tensor };
  quantized: Record<string, QuantizedModel>;
  dispose(): void;
}

const CASES: Record<string, { config: string; batch: number }> = {
  'fmnist-b8': { config: '', batch: 8 },
  'ddpm-b8': { config: 'configs/ddpm-cifar10.yaml', batch: 8 },
  'churches-b1': { config: 'configs/ldm-churches.yaml', batch: 1 },
};

/** The shipped model, calibrated here (mse, a few samples). */
async function shippedModel(calibSamples: number): Promise<BenchModel> {
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
  return {
    label: `${path.basename(DEFAULT_MODEL)}; quantized W8A8 by calibrate (mse, ${calibSamples} samples), paper's full-precision layers kept`,
    shape: [cfgModel.channels, cfgModel.image_size, cfgModel.image_size],
    timesteps: cfgModel.timesteps,
    fp: fp.model,
    quantized,
    dispose: () => owners.forEach((o) => o.dispose()),
  };
}

/** A config's UNet with random weights and its W8A8 models, cached under $TDQ_BENCH_CACHE. */
async function configModel(name: string, configFile: string): Promise<BenchModel> {
  const { config } = loadConfig(path.join(packageRoot, configFile), { purpose: 'model' });
  const mp = config.model.params as unknown as Record<string, unknown>;
  const u = mp.unet_config as { target: string; params: Record<string, unknown> };
  const p = u.params;
  const ddpm = u.target.endsWith('DDPMUNet');
  const shape: [number, number, number] = ddpm
    ? [p.in_channels as number, p.resolution as number, p.resolution as number]
    : [p.in_channels as number, p.image_size as number, p.image_size as number];
  const timesteps = (mp.timesteps as number | undefined) ?? 1000;
  const dir = process.env.TDQ_BENCH_CACHE ?? '/tmp/tdq-int-bench';
  fs.mkdirSync(dir, { recursive: true });
  const build = () => buildUNet({ target: u.target, params: p }, new Generator(0));
  const fpFile = path.join(dir, `${name}-fp32.safetensors`);
  if (!fs.existsSync(fpFile)) {
    // the zero-initialized layers (output convs) drawn as well: a timing model, not a trained one
    const m = build();
    const gen = new Generator(7);
    const fresh = new Map<string, Tensor>();
    for (const [k, v] of m.stateDict()) {
      if (v.ndim < 2 || v.dtype !== 'float32') continue;
      const d = (await v.data()) as Float32Array;
      if (d.some((e) => e !== 0)) continue;
      const fanIn = v.size / v.shape[0];
      fresh.set(k, tidy(() => scale(gen.randn(v.shape), 1 / Math.sqrt(fanIn))));
    }
    m.loadStateDict(fresh, { strict: false });
    for (const t of fresh.values()) t.dispose();
    await writeSafetensors(fpFile, m.stateDict());
    m.dispose();
  }
  const { tensors } = await readSafetensors(fpFile);
  const fp = build();
  fp.loadStateDict(tensors, { strict: true });
  fp.eval();
  const quantized: Record<string, QuantizedModel> = {};
  for (const [qname, useDynamic] of [['static W8A8', false], ['TDQ W8A8', true]] as const) {
    const qFile = path.join(dir, `${name}-${useDynamic ? 'tdq' : 'static'}-w8a8.safetensors`);
    if (!fs.existsSync(qFile)) {
      const m = build();
      m.loadStateDict(tensors, { strict: true });
      const t0 = Date.now();
      const qm = await calibrate(m, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic }), {
        schedule: { kind: 'linear', timesteps }, steps: 4, nSamples: 1, seed: 1, method: 'minmax', fitIters: 100, sampleShape: shape,
      });
      if (useDynamic) qm.buildTable();
      await writeSafetensors(qFile, qm.stateDict(), qm.checkpointMetadata());
      console.error(`${name}: calibrated ${qname} in ${((Date.now() - t0) / 1e3).toFixed(0)} s -> ${qFile}`);
      qm.dispose();
    }
    const q = await readSafetensors(qFile);
    const qm = loadQuantized(build(), q.metadata, q.tensors);
    for (const t of q.tensors.values()) t.dispose();
    qm.eval();
    quantized[qname] = qm;
  }
  for (const t of tensors.values()) t.dispose();
  return {
    label: `${configFile} UNet, random weights (seed 0), ${(fp.numParameters() / 1e6).toFixed(1)}M parameters; quantized W8A8 by calibrate (min-max steps, 1 sample x 4 DDIM steps), cached in ${dir}`,
    shape,
    timesteps,
    fp,
    quantized,
    dispose: () => {
      fp.dispose();
      Object.values(quantized).forEach((q) => q.dispose());
    },
  };
}

const USAGE = 'node dist/bench/int_exec.js [--case fmnist-b8|ddpm-b8|churches-b1] [--ways "static int,tdq int"] [--rounds 3] [--reps 5] [--out FILE | --profile FILE]';
const OPTIONS = {
  case: { type: 'string', value: 'NAME', default: 'fmnist-b8', help: 'fmnist-b8 (the shipped model), ddpm-b8 or churches-b1 (random weights, cached under $TDQ_BENCH_CACHE)' },
  batch: { type: 'string', value: 'N', help: "batch size (default: the case's)" },
  reps: { type: 'string', value: 'N', default: '5', help: 'timed forwards per block' },
  warmup: { type: 'string', value: 'N', default: '2', help: 'untimed forwards per block' },
  rounds: { type: 'string', value: 'N', default: '3', help: 'alternating blocks of all ways' },
  'calib-samples': { type: 'string', value: 'N', default: '4', help: 'calibration samples (shipped model)' },
  ways: { type: 'string', value: 'LIST', help: "fp32 and the executions whose names start with these, e.g. 'static int,tdq int' (default: all)" },
  out: commonOptions.report('int-exec.md'),
  profile: { type: 'string', value: 'FILE', help: 'write a per-op profile to FILE instead of timing' },
} as const;

async function main(): Promise<void> {
  const { caseName, spec, batch, reps, warmup, rounds, calibSamples, outFile, wayFilter, profileFile } = benchArgs(USAGE, OPTIONS, (a) => {
    const caseName = a.choice('case', Object.keys(CASES));
    const spec = CASES[caseName];
    const batch = a.optInt('batch', 1) ?? spec.batch;
    const wayFilter = (a.get('ways') ?? '').split(',').map((w) => w.trim().toLowerCase()).filter((w) => w);
    const known = ['static', 'tdq', 'static int', 'static fake', 'tdq int', 'tdq fake'];
    for (const w of wayFilter) if (!known.some((k) => k.startsWith(w))) throw new BenchArgsError(`--ways: '${w}' names no way (static, tdq, 'static int', 'tdq fake', ...)`);
    return {
      caseName, spec, batch, reps: a.int('reps', 1), warmup: a.int('warmup'), rounds: a.int('rounds', 1), calibSamples: a.int('calib-samples', 1),
      outFile: path.resolve(a.str('out')), wayFilter, profileFile: a.get('profile') ?? '',
    };
  });
  const info = native().info();
  const load0 = os.loadavg()[0];
  const t0 = Date.now();

  const bm = spec.config ? await configModel(caseName, spec.config) : await shippedModel(calibSamples);
  const quantized = bm.quantized;
  const shape = [batch, ...bm.shape];
  const x = runOp1('randn', [], { shape, seed: 1 });
  const t = fromArray(Array.from({ length: batch }, (_, i) => (i * 131 + 7) % bm.timesteps), [batch]);
  type Way = { name: string; run: () => Tensor; before?: () => void };
  let ways: Way[] = [{ name: 'fp32', run: () => bm.fp.forward(x, t) }];
  for (const [name, qm] of Object.entries(quantized)) {
    ways.push({ name: `${name} fake`, before: () => qm.setExec('fake'), run: () => qm.forward(x, t) });
    ways.push({ name: `${name} int`, before: () => qm.setExec('int'), run: () => qm.forward(x, t) });
  }
  const picked = (n: string) => wayFilter.some((f) => n.toLowerCase().replace(' w8a8', '').startsWith(f));
  if (wayFilter.length) ways = ways.filter((w) => w.name === 'fp32' || picked(w.name));
  if (profileFile) {
    writeProfile(path.resolve(profileFile), ways, { warmup, reps, batch, load0, t0 });
    x.dispose();
    t.dispose();
    bm.dispose();
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
    `# Whole-model forward: fp32 vs fake-quantized vs integer execution (${caseName}, CPU)`,
    '',
    `- command: \`node dist/bench/int_exec.js ${process.argv.slice(2).join(' ')}\``.replace(/ `$/, '`'),
    `- date: ${new Date(t0).toISOString()}, ${((Date.now() - t0) / 1000).toFixed(0)} s`,
    `- machine: ${lscpu('Model name')}, ${os.cpus().length} logical CPUs; avx512vnni ${f.avx512vnni}, amxInt8 ${f.amxInt8}`,
    `- load average (1 min) before / after: ${load0.toFixed(2)} / ${load1.toFixed(2)} (the benchmark itself accounts for about 1)`,
    `- tdq-native: ${info.threads} threads, cpu level ${info.cpuLevel}, int8 kernel ${info.int8Kernel}`,
    `- case ${caseName}: ${bm.label}; input ${shape.slice(1).join('x')}, batch ${batch}`,
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
  bm.dispose();
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
