// Checkpoint sizes and resident memory of quantized models: fp32, and W8A8 /
// W4A8 TDQ checkpoints with float32 weights or integer levels
// (src/quant/weights_format.ts), each loaded and sampled in its own process
// so that its peak RSS is its own; with --steps 50, images / s is DDIM-50
// sampling throughput of each execution (fp32, fake-quantized, integer).
//   node dist/bench/int_memory.js [--models fmnist-small,ddpm-cifar10] [--batch 4] [--steps 5] [--out bench/results/int-memory.md]
// fmnist-small uses the shipped weights; other configs random weights. The
// quantizers get synthetic steps (per-channel max|w| / qmax, TDQ MLPs at their
// constant init, table built): sizes and memory do not depend on calibration.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { sampleDdim } from '../src/diffusion/samplers/ddim';
import { buildUNet, scheduleFromConfig } from '../src/models/diffusion';
import { loadModel } from '../src/models/load';
import { resolveQuantConfig } from '../src/quant/config';
import { applyExec, quantizeModel } from '../src/quant/quantize_model';
import { type WeightsFormat, saveQuantizedCheckpoint } from '../src/quant/weights_format';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { releaseMemory } from '../src/tensor/tensor';
import { saveCheckpoint } from '../src/train/checkpoint';
import { benchArgs, commonOptions } from './args';

const USAGE = 'node dist/bench/int_memory.js [--models fmnist-small,ddpm-cifar10] [--batch 4] [--steps 5] [--out bench/results/int-memory.md]';
const EXECS = ['int', 'fake', 'none'] as const;
const OPTIONS = {
  models: { type: 'string', value: 'NAME,...', default: 'fmnist-small,ddpm-cifar10', help: 'configs/NAME.yaml models to measure' },
  batch: { type: 'string', value: 'N', default: '4', help: 'sampling batch' },
  steps: { type: 'string', value: 'N', default: '5', help: 'DDIM steps' },
  out: commonOptions.report('int-memory.md'),
  child: { type: 'string', value: 'CKPT', help: '(internal) measure this checkpoint in this process' },
  exec: { type: 'string', value: EXECS.join('|'), default: 'int', help: '(internal, with --child) execution of the quantized layers' },
} as const;

const MiB = 2 ** 20;

interface ChildResult {
  exec: string | null;
  loadMs: number;
  msPerStep: number;
  weights: { quantFloat: number; quantInt: number; quantPacked: number; other: number } | { fp32: number };
  engineLive: number;
  enginePeak: number;
  rssAfterLoad: number;
  peakRss: number;
}

/** In a child: load, sample, report. */
async function child(file: string, exec: 'int' | 'fake' | 'none', batch: number, steps: number): Promise<void> {
  const t0 = Date.now();
  const m = await loadModel(file);
  await releaseMemory();
  const loadMs = Date.now() - t0;
  const rssAfterLoad = process.memoryUsage().rss;
  let execName: string | null = null;
  if (m.quantized && exec !== 'none') execName = applyExec(m.quantized, exec).exec;
  const p = m.config.model.params as { channels: number; image_size: number };
  native().resetPeakMemory();
  const t1 = Date.now();
  const x = await sampleDdim((x, t) => m.model.forward(x, t), scheduleFromConfig(m.config.model.params), { shape: [batch, p.channels, p.image_size, p.image_size], steps, seed: 0 });
  x.dispose();
  const msPerStep = (Date.now() - t1) / steps;
  const weights = m.quantized ? m.quantized.weightBytes() : { fp32: m.model.parameters().reduce((s, t) => s + t.nbytes, 0) };
  const mem = native().memory();
  const r: ChildResult = { exec: execName, loadMs, msPerStep, weights, engineLive: mem.liveBytes, enginePeak: mem.peakBytes, rssAfterLoad, peakRss: process.resourceUsage().maxRSS * 1024 };
  m.dispose();
  process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
}

function runChild(file: string, exec: string, batch: number, steps: number): ChildResult {
  const r = spawnSync(process.execPath, [__filename, '--child', file, '--exec', exec, '--batch', String(batch), '--steps', String(steps)], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  if (r.status !== 0 || !line) throw new Error(`child ${file} ${exec} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line.slice(7)) as ChildResult;
}

/** Writes the fp32 checkpoint and W8A8 / W4A8 TDQ checkpoints in both weights formats; returns their paths. */
async function makeCheckpoints(name: string, dir: string): Promise<Record<string, string>> {
  const { config } = loadConfig(path.join(packageRoot, 'configs', `${name}.yaml`));
  const shipped = path.join(packageRoot, 'models', `${name}.safetensors`);
  const files: Record<string, string> = { fp32: path.join(dir, `${name}-fp32.safetensors`) };
  const fresh = async () => {
    if (fs.existsSync(shipped)) {
      const m = await loadModel(shipped);
      return { unet: m.model, dispose: () => m.dispose() };
    }
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    return { unet, dispose: () => unet.dispose() };
  };
  const f = await fresh();
  await saveCheckpoint(files.fp32, { config, model: f.unet as never });
  f.dispose();
  const T = (config.model.params as { timesteps: number }).timesteps;
  for (const bits of [8, 4]) {
    const u = await fresh();
    const qm = quantizeModel(u.unet, resolveQuantConfig({ nBitW: bits, nBitA: 8, useDynamic: true }), { timesteps: T, gen: new Generator(0) });
    const qmax = 2 ** (bits - 1) - 1;
    for (const l of qm.layers.values()) {
      const w = l.layer.weight.dataSync() as Float32Array, o = l.layer.weight.shape[0], k = w.length / o;
      const steps = new Array<number>(o);
      for (let c = 0; c < o; ++c) {
        let mx = 1e-6;
        for (let i = c * k; i < (c + 1) * k; ++i) mx = Math.max(mx, Math.abs(w[i]));
        steps[c] = mx / qmax;
      }
      l.weightQuant.setSteps(steps);
    }
    qm.buildTable();
    for (const fmt of ['float', 'int'] as WeightsFormat[]) {
      const file = path.join(dir, `${name}-w${bits}a8-${fmt}.safetensors`);
      await saveQuantizedCheckpoint(file, { config, model: qm, weightsFormat: fmt });
      files[`w${bits}a8-${fmt}`] = file;
    }
    u.dispose();
  }
  return files;
}

async function main(): Promise<void> {
  const a = benchArgs(USAGE, OPTIONS, (a) => ({
    child: a.get('child'), exec: a.choice('exec', EXECS), models: a.list('models'), batch: a.int('batch', 1), steps: a.int('steps', 1), out: path.resolve(a.str('out')),
  }));
  const { models, batch, steps } = a;
  if (a.child !== undefined) {
    await child(a.child, a.exec, batch, steps);
    return;
  }
  const sizeRows: string[] = [], memRows: string[] = [];
  const mib = (b: number) => (b / MiB).toFixed(1);
  for (const name of models) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-int-memory-'));
    try {
      const files = await makeCheckpoints(name, dir);
      const fp = fs.statSync(files.fp32).size;
      for (const [k, f] of Object.entries(files)) {
        const s = fs.statSync(f).size;
        sizeRows.push(`| ${name} | ${k} | ${mib(s)} | ${(s / fp).toFixed(3)} |`);
      }
      const runs: [string, string, string][] = [
        ['fp32', files.fp32, 'none'],
        ['W8A8 float file, fake', files['w8a8-float'], 'fake'],
        ['W8A8 float file, int', files['w8a8-float'], 'int'],
        ['W8A8 int file, int', files['w8a8-int'], 'int'],
        ['W8A8 int file, fake', files['w8a8-int'], 'fake'],
        ['W4A8 int file, int', files['w4a8-int'], 'int'],
      ];
      for (const [label, file, exec] of runs) {
        const r = runChild(file, exec, batch, steps);
        const w = r.weights;
        const cols = 'fp32' in w
          ? [mib(w.fp32), '-', '-', '-']
          : [mib(w.quantFloat), mib(w.quantInt), mib(w.quantPacked), mib(w.other)];
        memRows.push(`| ${name} | ${label} | ${cols.join(' | ')} | ${mib(r.engineLive)} | ${mib(r.enginePeak)} | ${mib(r.rssAfterLoad)} | ${mib(r.peakRss)} | ${r.msPerStep.toFixed(0)} | ${((batch * 1000) / (r.msPerStep * steps)).toFixed(2)} |`);
        console.log(memRows[memRows.length - 1]);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const out = [
    '# Quantized checkpoints: file sizes and resident weights',
    '',
    `- command: \`node dist/bench/int_memory.js --models ${models.join(',')} --batch ${batch} --steps ${steps}\``,
    `- date: ${new Date().toISOString().slice(0, 16)}Z, machine: ${os.cpus()[0]?.model?.trim()}, ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(1)} at the end`,
    '- quantized: TDQ W8A8 / W4A8 with the paper\'s full-precision layers (time embedding, first and last conv); synthetic steps (sizes do not depend on them)',
    '',
    '## Checkpoint files',
    '',
    'float: float32 weights (as before); int: int8 levels, or int4 two per byte at 4 bits (src/quant/weights_format.ts). Besides the weights a quantized file',
    'holds the full-precision layers, biases, and each activation quantizer\'s TDQ MLP and step table (T floats).',
    '',
    '| model | file | MiB | / fp32 |',
    '|---|---|---:|---:|',
    ...sizeRows,
    '',
    '## Resident memory, each in its own process (load, then DDIM sampling)',
    '',
    `Weights of the quantized layers held as float32, as integer levels (int8 / packed int4), and as the integer kernels' packed int8 copy`,
    `(built on first integer use); other: the remaining parameters and buffers (full-precision layers, biases, norms, quantizers, tables).`,
    `Engine live / peak: native().memory() after sampling ${steps} steps at batch ${batch}; RSS after load (after releaseMemory), and the process peak RSS (getrusage maxrss).`,
    `ms / step and images / s: the whole DDIM-${steps} run of ${batch} images (including the first step's one-time packing of the integer weights), wall clock.`,
    '',
    '| model | run | quant fp32 MiB | quant int MiB | packed int8 MiB | other MiB | engine live MiB | engine peak MiB | RSS after load MiB | peak RSS MiB | ms / step | images / s |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...memRows,
    '',
  ].join('\n');
  fs.writeFileSync(a.out, out);
  console.log(`wrote ${a.out}`);
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
