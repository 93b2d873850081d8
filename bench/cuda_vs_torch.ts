// The CUDA backend against PyTorch eager on the same GPU, side by side in one
// run (issue 15): DDIM sampling with the LSUN-Churches LDM's UNet
// (configs/ldm-churches.yaml, 4 x 32 x 32 latents) at batch 1 and 16, and a
// training step (forward, backward, gradient clipping, Adam) of the DDPM
// CIFAR-10 UNet (configs/ddpm-cifar10.yaml) at batch 64, each in float32 and
// float16. PyTorch runs the reference modules of test/reference/ (same
// architecture and parameter names; the counts are checked equal) through
// bench/torch_diffusion.py; its float16 is torch.autocast(float16) (plus
// GradScaler for training). Ours has no float16 path yet: those rows say so.
//
//   node dist/bench/cuda_vs_torch.js [--device cuda|cpu] [--steps 50] [--reps 3] [--rounds 2]
//       [--tiny] [--out bench/results/cuda-vs-torch.md] [--json FILE] [--no-torch]
//
// On a GPU machine: scripts/gpu-bench.sh (unpacks Node, runs the JS CUDA tests
// and this bench, writes everything under $OUT). --device cpu --tiny is the
// dry run that checks the plumbing anywhere (small UNets, batches 1 / 2 / 4,
// PyTorch on the CPU, float32 only).
//
// Each case: one warm-up run per side, then --rounds rounds of --reps runs of
// ours and of PyTorch's, alternating which goes first. A sampling run is
// --steps DDIM steps (uniform layout of DDIM-50, eta 0, from the noisiest);
// a training run is one step. Medians are reported; images/s of sampling is
// for DDIM-50 (batch / (50 x the median step time)). Weights are random
// (timing does not depend on them). A side that fails (a missing CUDA
// kernel, out of memory) is reported with its error and the bench goes on.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type Config, loadConfig } from '../src/config';
import { ddimSamplingParameters, ddimStepCoefficients, makeDdimTimesteps } from '../src/diffusion/samplers';
import { buildUNet, PixelDiffusion, scheduleFromConfig } from '../src/models/diffusion';
import type { NoiseSchedule } from '../src/diffusion/schedule';
import { Adam } from '../src/optim/adam';
import { clipGradNorm } from '../src/optim/clip';
import { backward, noGrad } from '../src/tensor/autograd';
import { resolveDevice, probeCuda } from '../src/tensor/device';
import { type Device, native, packageRoot } from '../src/tensor/native';
import { add, scale } from '../src/tensor/ops';
import { Generator } from '../src/tensor/random';
import { keep, tidy } from '../src/tensor/scope';
import { type Tensor, fromArray } from '../src/tensor/tensor';
import { benchArgs } from './args';
import { TorchServer } from './torch_client';

const DDIM_STEPS = 50;
const USAGE = 'node dist/bench/cuda_vs_torch.js [--device cuda|cpu] [--steps 50] [--reps 3] [--rounds 2] [--tiny] [--out FILE] [--json FILE] [--no-torch]';
const args = benchArgs(
  USAGE,
  {
    device: { type: 'string', value: 'cuda|cpu', default: 'cuda', help: 'our device (PyTorch runs on the same kind)' },
    steps: { type: 'string', value: 'N', default: '50', help: 'DDIM steps per timed sampling run (of the DDIM-50 layout)' },
    reps: { type: 'string', value: 'N', default: '3', help: 'timed runs per side per round' },
    rounds: { type: 'string', value: 'N', default: '2', help: 'rounds (the side going first alternates)' },
    tiny: { type: 'boolean', help: 'the dry run: UNets 32 channels wide and batches 1 / 2 / 4 (with --device cpu, minutes on 2 cores)' },
    out: { type: 'string', value: 'FILE', default: 'bench/results/cuda-vs-torch.md', help: 'the markdown report' },
    json: { type: 'string', value: 'FILE', help: 'also the results as JSON' },
    'no-torch': { type: 'boolean', help: 'ours only' },
  },
  (a) => ({
    device: a.choice('device', ['cuda', 'cpu'] as const),
    steps: Math.min(a.int('steps', 1), DDIM_STEPS),
    reps: a.int('reps', 1),
    rounds: a.int('rounds', 1),
    tiny: a.flag('tiny'),
    out: a.str('out'),
    json: a.get('json'),
    torch: !a.flag('no-torch'),
  }),
);

interface CaseSpec {
  label: string;
  config: string;
  mode: 'sample' | 'train';
  batch: number;
}
const CASES: CaseSpec[] = [
  { label: 'LDM churches UNet, DDIM sampling, batch 1', config: 'ldm-churches.yaml', mode: 'sample', batch: 1 },
  { label: 'LDM churches UNet, DDIM sampling, batch 16', config: 'ldm-churches.yaml', mode: 'sample', batch: 16 },
  { label: 'DDPM CIFAR-10 UNet, training step, batch 64', config: 'ddpm-cifar10.yaml', mode: 'train', batch: 64 },
];
const TINY_BATCH: Record<number, number> = { 1: 1, 16: 2, 64: 4 };
const DTYPES = ['float32', 'float16'] as const;
type BenchDType = (typeof DTYPES)[number];

// ---- PyTorch's side (bench/torch_diffusion.py) -------------------------------------

/** bench/torch_diffusion.py on every core, OpenMP waiting passively. */
const torchServer = () => new TorchServer('torch_diffusion.py', os.cpus().length, 'passive');

// ---- our side ----------------------------------------------------------------------

function ddimPlan(schedule: NoiseSchedule): [number, number, number][] {
  const ts = makeDdimTimesteps('uniform', DDIM_STEPS, schedule.numTimesteps);
  const p = ddimSamplingParameters(schedule.alphasCumprod, ts, 0);
  const plan: [number, number, number][] = [];
  for (let k = ts.length - 1; k >= 0; --k) {
    const { cx, ce } = ddimStepCoefficients(p.alphas[k], p.alphasPrev[k], p.sigmas[k]);
    plan.push([ts[k], cx, ce]);
  }
  return plan;
}

function caseConfig(spec: CaseSpec): Config {
  const width = spec.config.startsWith('ddpm') ? 'ch' : 'model_channels';
  const overrides = args.tiny ? [`model.params.unet_config.params.${width}=32`] : [];
  return loadConfig(path.join(packageRoot, 'configs', spec.config), { overrides }).config;
}

interface Runner {
  params: number;
  run(steps: number): Promise<void>;
  dispose(): void;
}

function randomArray(n: number, seed: number): Float32Array {
  const g = new Generator(seed);
  const t = g.randn([n]);
  const a = t.dataSync() as Float32Array;
  t.dispose();
  return a;
}

/** (C, H, W) the UNet denoises: pixels, or an LDM's latents (model.params.channels / image_size). */
function sampleShape(cfg: Config): [number, number, number] {
  const p = cfg.model.params as unknown as { channels: number; image_size: number };
  return [p.channels, p.image_size, p.image_size];
}

function makeRunner(cfg: Config, spec: CaseSpec, batch: number, device: Device): Runner {
  const unet = buildUNet(cfg.model.params.unet_config, new Generator(cfg.training.seed)).to(device);
  const shape = [batch, ...sampleShape(cfg)];
  const size = shape.reduce((x, y) => x * y, 1);
  const params = unet.numParameters();
  if (spec.mode === 'sample') {
    // The UNet alone (an LDM's first stage is not part of the timed loop).
    unet.eval();
    const plan = ddimPlan(scheduleFromConfig(cfg.model.params));
    const xT = randomArray(size, 1);
    return {
      params,
      async run(steps) {
        let x = keep(fromArray(xT, shape, 'float32', device));
        for (const [t, cx, ce] of plan.slice(0, steps)) {
          const next = noGrad(() => tidy(() => add(scale(x, cx), scale(unet.forward(x, fromArray(new Float32Array(batch).fill(t), [batch], 'float32', device)), ce))));
          x.dispose();
          x = keep(next);
        }
        await x.data();
        x.dispose();
      },
      dispose: () => unet.dispose(),
    };
  }
  unet.train();
  const diffusion = new PixelDiffusion(cfg.model, unet);
  const t = cfg.training;
  const opt = new Adam(unet.parameters(), { lr: cfg.model.base_learning_rate, betas: t.optimizer.betas as [number, number], eps: t.optimizer.eps });
  const x0 = keep(fromArray(randomArray(size, 2).map((v) => Math.tanh(v)), shape, 'float32', device));
  const gen = new Generator(3);
  return {
    params,
    async run(steps) {
      let loss: Tensor | null = null;
      for (let i = 0; i < steps; ++i) {
        loss?.dispose();
        loss = keep(tidy(() => {
          const l = diffusion.trainingLoss(x0, gen).loss;
          backward(l);
          return l;
        }));
        if (t.grad_clip) clipGradNorm(unet.parameters(), t.grad_clip).dispose();
        opt.step();
        unet.zeroGrad();
      }
      await loss?.data();
      loss?.dispose();
    },
    dispose: () => {
      x0.dispose();
      unet.dispose();
    },
  };
}

// ---- the run -----------------------------------------------------------------------

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

interface SideResult {
  ms?: number; // median per run
  error?: string;
  note?: string;
}
interface Row {
  label: string;
  dtype: BenchDType;
  batch: number;
  mode: 'sample' | 'train';
  params?: number;
  ours: SideResult;
  torch: SideResult;
}

async function timeRuns(run: () => Promise<void>, n: number): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < n; ++i) {
    const t0 = process.hrtime.bigint();
    await run();
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return ms;
}

function message(e: unknown): string {
  return (e instanceof Error ? `${e.name}: ${e.message}` : String(e)).split('\n')[0].slice(0, 300);
}

async function benchCase(spec: CaseSpec, dtype: BenchDType, device: Device): Promise<Row> {
  const cfg = caseConfig(spec);
  const batch = args.tiny ? TINY_BATCH[spec.batch] : spec.batch;
  const runSteps = spec.mode === 'sample' ? args.steps : 1;
  const row: Row = { label: spec.label, dtype, batch, mode: spec.mode, ours: {}, torch: {} };
  let ours: Runner | null = null;
  if (dtype === 'float16') row.ours = { note: 'n/a: the engine has no float16 path yet' };
  else {
    try {
      ours = makeRunner(cfg, spec, batch, device);
      row.params = ours.params;
      await ours.run(spec.mode === 'sample' ? 1 : 1); // warm-up (allocator, kernels)
    } catch (e) {
      row.ours = { error: message(e) };
      ours?.dispose();
      ours = null;
    }
  }
  let torch: TorchServer | null = null;
  if (!args.torch) row.torch = { note: 'not run (--no-torch)' };
  else if (dtype === 'float16' && device !== 'cuda') row.torch = { note: 'float16 is benchmarked on cuda only' };
  else {
    torch = torchServer();
    try {
      const unet = cfg.model.params.unet_config;
      const p = scheduleFromConfig(cfg.model.params);
      const setup = {
        model: unet.target.endsWith('DDPMUNet') ? 'ddpm' : 'openai', unet: unet.params, mode: spec.mode, batch, shape: sampleShape(cfg),
        seed: cfg.training.seed, ddim: ddimPlan(p), sqrt_ac: [...p.sqrtAlphasCumprod], sqrt_1m_ac: [...p.sqrtOneMinusAlphasCumprod],
        lr: cfg.model.base_learning_rate, betas: cfg.training.optimizer.betas, eps: cfg.training.optimizer.eps, grad_clip: cfg.training.grad_clip ?? 0,
        loss: cfg.model.params.loss_type, device, dtype,
      };
      const params = (await torch.call<{ params: number }>({ setup })).params;
      if (row.params !== undefined && params !== row.params) throw new Error(`parameter counts differ (ours ${row.params}, torch ${params})`);
      row.params ??= params;
      await torch.call({ run: 1, steps: runSteps });
    } catch (e) {
      row.torch = { error: message(e) };
      await torch.close();
      torch = null;
    }
  }
  const oursMs: number[] = [], torchMs: number[] = [];
  for (let r = 0; r < args.rounds; ++r) {
    const sides = [
      async () => {
        if (!ours) return;
        try {
          oursMs.push(...(await timeRuns(() => ours!.run(runSteps), args.reps)));
        } catch (e) {
          row.ours = { error: message(e) };
          ours.dispose();
          ours = null;
        }
      },
      async () => {
        if (!torch) return;
        try {
          torchMs.push(...(await torch.call<{ ms: number[] }>({ run: args.reps, steps: runSteps })).ms);
        } catch (e) {
          row.torch = { error: message(e) };
          await torch.close();
          torch = null;
        }
      },
    ];
    if (r % 2) sides.reverse();
    for (const s of sides) await s();
  }
  if (oursMs.length && !row.ours.error) row.ours.ms = median(oursMs);
  if (torchMs.length && !row.torch.error) row.torch.ms = median(torchMs);
  (ours as Runner | null)?.dispose();
  await (torch as TorchServer | null)?.close();
  return row;
}

function cell(r: Row, s: SideResult): string {
  if (s.error) return `error: ${s.error.replace(/\|/g, '/')}`;
  if (s.note) return s.note;
  if (s.ms === undefined) return '-';
  if (r.mode === 'train') return `${s.ms.toFixed(1)} ms/step (${((r.batch * 1000) / s.ms).toFixed(0)} img/s)`;
  const perStep = s.ms / args.steps;
  return `${perStep.toFixed(2)} ms/step (${((r.batch * 1000) / (perStep * DDIM_STEPS)).toFixed(2)} img/s DDIM-50)`;
}

async function main(): Promise<void> {
  const device = resolveDevice(args.device); // a DeviceUnavailableError names the reason
  const info = native().info();
  let torchInfo: Record<string, unknown> | null = null;
  if (args.torch) {
    const t = torchServer();
    try {
      torchInfo = await t.call<Record<string, unknown>>({ info: true });
    } catch (e) {
      torchInfo = { error: message(e) };
    }
    await t.close();
  }
  const rows: Row[] = [];
  for (const spec of CASES)
    for (const dtype of DTYPES) {
      const row = await benchCase(spec, dtype, device);
      rows.push(row);
      console.error(`${row.label} ${dtype}: ours ${cell(row, row.ours)}; torch ${cell(row, row.torch)}`);
    }
  const mem = device === 'cuda' ? native().cudaMemory() : null;
  const ratio = (r: Row) => (r.ours.ms && r.torch.ms ? `${(r.torch.ms / r.ours.ms).toFixed(2)}x` : '-');
  const lines = [
    `# CUDA backend vs PyTorch eager${args.tiny ? ' (dry run: --tiny)' : ''}`,
    '',
    `Command: \`node dist/bench/cuda_vs_torch.js ${process.argv.slice(2).join(' ')}\` on ${new Date().toISOString()}.`,
    `Machine: ${os.cpus()[0]?.model?.trim() ?? '?'} x ${os.cpus().length}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; device ${device}` +
      (device === 'cuda' ? ` (${info.cuda.buildInfo}; ${mem ? `${(mem.deviceTotal / 2 ** 30).toFixed(0)} GiB` : ''})` : ` (cuda: ${probeCuda().reason || 'available'})`) + '.',
    `PyTorch: ${torchInfo ? JSON.stringify(torchInfo) : 'not run'}.`,
    `Timed: ${args.rounds} rounds x ${args.reps} runs per side, medians; sampling runs are ${args.steps} DDIM steps (images/s for DDIM-50), training runs one step. Random weights.`,
    '',
    '| case | dtype | batch | params | ours | PyTorch | PyTorch / ours |',
    '|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.label} | ${r.dtype} | ${r.batch} | ${r.params ?? '-'} | ${cell(r, r.ours)} | ${cell(r, r.torch)} | ${ratio(r)} |`),
    '',
  ];
  const md = lines.join('\n');
  process.stdout.write(md + '\n');
  fs.mkdirSync(path.dirname(path.resolve(args.out)), { recursive: true });
  fs.writeFileSync(args.out, md + '\n');
  if (args.json) fs.writeFileSync(args.json, JSON.stringify({ device, tiny: args.tiny, steps: args.steps, torch: torchInfo, rows }, null, 2) + '\n');
}

main().catch((e) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exit(1);
});
