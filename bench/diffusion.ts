// End-to-end CPU benchmark of the diffusion models against PyTorch: sampling
// throughput (DDIM, 50 steps) and training throughput (forward + backward +
// gradient clipping + Adam step) of the shipped Fashion-MNIST UNet
// (configs/fmnist-small.yaml) and of the DDPM CIFAR-10 UNet
// (configs/ddpm-cifar10.yaml), with peak memory. PyTorch runs the reference
// modules of test/reference/ (same architecture, same parameter names) on the
// same shapes, in the same run. Writes a markdown report.
//
//   node dist/bench/diffusion.js [--quick] [--threads <all CPUs>] [--torch-threads <threads>]
//                                [--torch-wait-policy passive|default] [--rounds 2]
//                                [--out bench/results/diffusion-cpu.md] [--no-torch] [--no-profile]
//
// --quick: 1 round of fewer runs, sampling runs of a few DDIM steps whose time
// is scaled to 50 steps; prints the report, and writes it only to --out.
//
// --torch-wait-policy: PyTorch runs with OMP_WAIT_POLICY=PASSIVE unless
// 'default' is given. On a machine shared with other work, libgomp's default
// spin-waiting makes PyTorch's 2-thread convolutions several times slower than
// its 1-thread ones (each parallel region waits for a descheduled spinner);
// PASSIVE removes that, so the comparison is against the faster PyTorch.
//
// Weights are at their random initialisation (timing does not depend on the
// values). Sampling runs in eval mode under no-grad; training in train mode
// (dropout as configured) with Adam and the config's gradient clipping, on a
// fixed random batch. Each case runs in a fresh node process (this script
// re-run with --case N) and a fresh PyTorch process, so each process's peak
// RSS is the case's. Blocks of runs of ours and PyTorch's alternate (ours
// first in even rounds, PyTorch first in odd ones) so a shared machine's load
// falls on both alike; medians are reported, with process CPU time beside
// wall time. Our per-op profile is summed over the timed runs; PyTorch's comes
// from one extra run under torch.autograd.profiler (--no-profile skips both).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

import { type Config, loadConfig } from '../src/config';
import { ddimSamplingParameters, ddimStepCoefficients, makeDdimTimesteps, sample } from '../src/diffusion/samplers';
import { buildUNet, PixelDiffusion, type Denoiser } from '../src/models/diffusion';
import { Dropout } from '../src/nn/layers';
import { Adam } from '../src/optim/adam';
import { clipGradNorm } from '../src/optim/clip';
import { backward } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { tidy } from '../src/tensor/scope';
import { runOp1 } from '../src/tensor/tensor';
import { benchArgs, commonOptions } from './args';
import { lscpu } from './machine';
import { TorchServer } from './torch_client';

const DDIM_STEPS = 50;

const USAGE =
  'node dist/bench/diffusion.js [--quick] [--threads <all CPUs>] [--torch-threads <threads>] [--torch-wait-policy passive|default] [--rounds 2] [--out bench/results/diffusion-cpu.md] [--no-torch] [--no-profile]';
const WAIT_POLICIES = ['passive', 'default'] as const;
const OPTIONS = {
  quick: { type: 'boolean', help: '1 round of fewer runs, sampling of a few DDIM steps scaled to 50; writes only to --out' },
  threads: commonOptions.threads('our threads'),
  'torch-threads': { type: 'string', value: 'N', help: "PyTorch's threads (default: --threads)" },
  'torch-wait-policy': { type: 'string', value: WAIT_POLICIES.join('|'), default: 'passive', help: "PyTorch's OMP_WAIT_POLICY: PASSIVE, or libgomp's default" },
  rounds: { type: 'string', value: 'N', help: 'rounds of alternating blocks (default: 2, 1 with --quick)' },
  out: { type: 'string', value: 'FILE', help: 'report file (default: bench/results/diffusion-cpu.md; with --quick none, the report is printed)' },
  'no-torch': { type: 'boolean', help: 'time ours only' },
  'no-profile': { type: 'boolean', help: 'skip the per-op profiles' },
  case: { type: 'string', value: 'I', help: '(internal) run case I in this process and print its result' },
} as const;

interface CaseSpec {
  model: 'fmnist-small' | 'ddpm-cifar10';
  configFile: string;
  mode: 'sample' | 'train';
  batch: number;
  /** Timed runs per engine per round (a run: one whole DDIM sampling, or one training step). */
  reps: number;
  /** Untimed runs before the first round (for sampling: short runs of warmupSteps steps). */
  warmup: number;
  /** DDIM steps of a timed sampling run (50, or fewer with --quick: the time is scaled to 50). */
  steps: number;
  /** Sampler steps, or training steps, of PyTorch's profiled run. */
  profileSteps: number;
}

// Sizes chosen so the whole run stays near 10 minutes on 2 busy cores. DDIM
// step counts of short runs are ones the uniform selection honours exactly
// (T / steps an integer); a DDIM step costs one model call whatever its t.
function cases(quick: boolean): CaseSpec[] {
  const fm = path.join(packageRoot, 'configs', 'fmnist-small.yaml');
  const cf = path.join(packageRoot, 'configs', 'ddpm-cifar10.yaml');
  return [
    { model: 'fmnist-small', configFile: fm, mode: 'sample', batch: 16, reps: quick ? 1 : 2, warmup: 1, steps: quick ? 10 : DDIM_STEPS, profileSteps: quick ? 5 : 10 },
    { model: 'fmnist-small', configFile: fm, mode: 'train', batch: 64, reps: quick ? 2 : 4, warmup: 1, steps: 1, profileSteps: quick ? 1 : 2 },
    { model: 'ddpm-cifar10', configFile: cf, mode: 'sample', batch: 4, reps: 1, warmup: 1, steps: quick ? 5 : DDIM_STEPS, profileSteps: quick ? 2 : 4 },
    { model: 'ddpm-cifar10', configFile: cf, mode: 'train', batch: 8, reps: quick ? 1 : 3, warmup: 1, steps: 1, profileSteps: 1 },
  ];
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// ---- process memory (Linux) ---------------------------------------------------

/** Resets this process's peak-RSS mark to its current RSS (Linux >= 4.0). */
function resetPeakRss(): boolean {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}
const peakRss = () => process.resourceUsage().maxRSS * 1024;
const mib = (b: number) => (b / 2 ** 20).toFixed(0);

// ---- the PyTorch side -----------------------------------------------------------

interface TorchOptions {
  threads: number;
  waitPolicy: 'passive' | 'default';
}

/** bench/torch_diffusion.py (one process per case). */
const torchServer = (opts: TorchOptions) => new TorchServer('torch_diffusion.py', opts.threads, opts.waitPolicy);

// ---- our side ---------------------------------------------------------------------

interface Runner {
  params: number;
  /** One timed run: a DDIM sampling of `steps` steps, or `steps` training steps. */
  run(steps: number): Promise<void>;
  dispose(): void;
}

function ddimPlan(diffusion: PixelDiffusion, steps: number): [number, number, number][] {
  const ts = makeDdimTimesteps('uniform', steps, diffusion.schedule.numTimesteps);
  const p = ddimSamplingParameters(diffusion.schedule.alphasCumprod, ts, 0);
  const plan: [number, number, number][] = [];
  for (let k = ts.length - 1; k >= 0; --k) {
    const { cx, ce } = ddimStepCoefficients(p.alphas[k], p.alphasPrev[k], p.sigmas[k]);
    plan.push([ts[k], cx, ce]);
  }
  return plan;
}

function makeRunner(cfg: Config, spec: CaseSpec): { runner: Runner; diffusion: PixelDiffusion } {
  const unet: Denoiser = buildUNet(cfg.model.params.unet_config, new Generator(cfg.training.seed));
  const diffusion = new PixelDiffusion(cfg.model, unet);
  const [c, h, w] = diffusion.imageShape;
  const shape = [spec.batch, c, h, w];
  const params = unet.numParameters();
  const seed = 1;
  if (spec.mode === 'sample') {
    unet.eval();
    const runner: Runner = {
      params,
      async run(steps) {
        // A step costs one model call whatever its timestep, so shorter runs use DDIM with fewer steps.
        const x = await sample(diffusion.epsModel(), { shape, sampler: 'ddim', steps, seed, schedule: diffusion.schedule });
        x.dispose();
      },
      dispose: () => unet.dispose(),
    };
    return { runner, diffusion };
  }
  unet.train();
  const t = cfg.training;
  const gen = new Generator(seed);
  for (const [, m] of unet.namedModules()) if (m instanceof Dropout) m.generator = new Generator(seed + 1);
  const x0 = runOp1('affine', [gen.rand(shape)], { scale: 2, shift: -1 });
  const optimizer = new Adam(unet.namedParameters(), { lr: cfg.model.base_learning_rate, betas: t.optimizer.betas as [number, number], eps: t.optimizer.eps });
  const paramList = unet.parameters();
  const runner: Runner = {
    params,
    async run(steps) {
      for (let i = 0; i < steps; ++i) {
        const loss = tidy(() => {
          const { loss } = diffusion.trainingLoss(x0, gen);
          backward(loss);
          return loss;
        });
        const norm = t.grad_clip ? clipGradNorm(paramList, t.grad_clip) : null;
        optimizer.step();
        unet.zeroGrad();
        await loss.item();
        loss.dispose();
        norm?.dispose();
      }
    },
    dispose: () => {
      optimizer.dispose();
      x0.dispose();
      unet.dispose();
    },
  };
  return { runner, diffusion };
}

/** Process CPU time (user + system, all threads) in ms. */
function cpuMs(): number {
  const u = process.resourceUsage();
  return (u.userCPUTime + u.systemCPUTime) / 1e3;
}

/** Wall and CPU milliseconds of one run. */
async function runOurs(r: Runner, steps: number): Promise<{ ms: number; cpu: number }> {
  const t0 = process.hrtime.bigint(), c0 = cpuMs();
  await r.run(steps);
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, cpu: cpuMs() - c0 };
}

// ---- one case -------------------------------------------------------------------

interface OpRow {
  name: string;
  calls: number;
  seconds: number;
}
interface CaseResult {
  spec: CaseSpec;
  params: number;
  torchParams: number | null;
  /** Wall ms of the timed runs. */
  ours: number[];
  torch: number[];
  /** CPU ms (user + system, whole process) of the same runs. */
  oursCpu: number[];
  torchCpu: number[];
  oursEnginePeak: number;
  oursPeakRss: number;
  oursRssBefore: number;
  torchPeakRss: number | null;
  torchRssBefore: number | null;
  profile: { ours: OpRow[]; oursOpSeconds: number; oursWall: number; torch: OpRow[] | null; torchSelfSeconds: number; torchWall: number } | null;
  loadavg: number[];
}

/** Milliseconds of one run -> images per second (sampling scaled to DDIM 50 steps). */
function imagesPerSecond(spec: CaseSpec, ms: number): number {
  const perRun = spec.mode === 'sample' ? (ms * DDIM_STEPS) / spec.steps : ms;
  return spec.batch / (perRun / 1e3);
}

async function runCase(spec: CaseSpec, rounds: number, torchOpts: TorchOptions | null, withProfile: boolean): Promise<CaseResult> {
  const cfg = loadConfig(spec.configFile).config;
  const label = `${spec.model} ${spec.mode} b${spec.batch}`;
  const torch = torchOpts ? torchServer(torchOpts) : null;
  const loadavg: number[] = [os.loadavg()[0]];
  try {
    const torchRssBefore = torch ? (await torch.call<{ rss_bytes: number }>({ info: true })).rss_bytes : null;
    const oursRssBefore = process.memoryUsage().rss;
    resetPeakRss();
    native().resetPeakMemory();
    const { runner, diffusion } = makeRunner(cfg, spec);
    const warmSteps = spec.mode === 'sample' ? 2 : 1;
    let torchParams: number | null = null;
    if (torch) {
      const unet = cfg.model.params.unet_config;
      const p = diffusion.schedule;
      const setup = {
        model: unet.target.endsWith('DDPMUNet') ? 'ddpm' : 'openai',
        unet: unet.params,
        mode: spec.mode,
        batch: spec.batch,
        shape: diffusion.imageShape,
        seed: cfg.training.seed,
        ddim: ddimPlan(diffusion, DDIM_STEPS),
        sqrt_ac: [...p.sqrtAlphasCumprod],
        sqrt_1m_ac: [...p.sqrtOneMinusAlphasCumprod],
        lr: cfg.model.base_learning_rate,
        betas: cfg.training.optimizer.betas,
        eps: cfg.training.optimizer.eps,
        grad_clip: cfg.training.grad_clip ?? 0,
        loss: cfg.model.params.loss_type,
      };
      await torch.call({ reset_peak: true });
      torchParams = (await torch.call<{ params: number }>({ setup })).params;
      if (torchParams !== runner.params) throw new Error(`${label}: parameter counts differ (ours ${runner.params}, torch ${torchParams})`);
      await torch.call({ run: spec.warmup, steps: warmSteps });
    }
    for (let i = 0; i < spec.warmup; ++i) await runOurs(runner, warmSteps);

    const ours: number[] = [], theirs: number[] = [], oursCpu: number[] = [], torchCpu: number[] = [];
    const oursBlock = async () => {
      for (let i = 0; i < spec.reps; ++i) {
        const { ms, cpu } = await runOurs(runner, spec.steps);
        ours.push(ms);
        oursCpu.push(cpu);
      }
    };
    const torchBlock = async () => {
      if (!torch) return;
      const r = await torch.call<{ ms: number[]; cpu_ms: number[] }>({ run: spec.reps, steps: spec.mode === 'sample' ? spec.steps : 1 });
      theirs.push(...r.ms);
      torchCpu.push(...r.cpu_ms);
    };
    // Our op profile is taken over the timed runs themselves: it costs two clock
    // reads and a map update per op (microseconds against ops of 0.1 ms and more),
    // and sums over every timed run, which evens out a shared machine's hiccups.
    if (withProfile) native().setProfiling(true);
    for (let r = 0; r < rounds; ++r) {
      if (r % 2 === 0) await oursBlock(), await torchBlock();
      else await torchBlock(), await oursBlock();
      loadavg.push(os.loadavg()[0]);
    }
    const prof = withProfile ? native().profile() : null;
    if (withProfile) native().setProfiling(false);
    const oursEnginePeak = native().memory().peakBytes;
    const oursPeakRss = peakRss();
    const torchPeakRss = torch ? (await torch.call<{ peak_rss_bytes: number }>({ memory: true })).peak_rss_bytes : null;

    let profile: CaseResult['profile'] = null;
    if (prof) {
      const oursWall = ours.reduce((a, b) => a + b, 0) / 1e3;
      const rows = Object.entries(prof).map(([name, v]) => ({ name, calls: v.calls, seconds: v.seconds })).sort((a, b) => b.seconds - a.seconds);
      let torchRows: OpRow[] | null = null, torchSelf = 0, torchWall = 0;
      if (torch) {
        const tp = await torch.call<{ ops: [string, number, number][]; total_self_seconds: number; seconds: number }>({ profile: spec.profileSteps, top: 10 });
        torchRows = tp.ops.map(([name, calls, seconds]) => ({ name, calls, seconds }));
        torchSelf = tp.total_self_seconds;
        torchWall = tp.seconds;
      }
      profile = { ours: rows, oursOpSeconds: rows.reduce((s, r) => s + r.seconds, 0), oursWall, torch: torchRows, torchSelfSeconds: torchSelf, torchWall };
    }
    runner.dispose();
    loadavg.push(os.loadavg()[0]);
    const res: CaseResult = { spec, params: runner.params, torchParams, ours, torch: theirs, oursCpu, torchCpu, oursEnginePeak, oursPeakRss, oursRssBefore, torchPeakRss, torchRssBefore, profile, loadavg };
    const o = imagesPerSecond(spec, median(ours));
    const t = theirs.length ? imagesPerSecond(spec, median(theirs)) : null;
    console.log(
      `${label.padEnd(28)} ours ${o.toFixed(2).padStart(7)} img/s` +
        (t === null ? '' : `   torch ${t.toFixed(2).padStart(7)} img/s   ours/torch ${(o / t).toFixed(2)} (CPU time ${(median(torchCpu) / median(oursCpu)).toFixed(2)})`) +
        `   (load ${loadavg.map((l) => l.toFixed(1)).join(' ')})`,
    );
    return res;
  } finally {
    await torch?.close();
  }
}

// ---- report -----------------------------------------------------------------------

const fmt = (x: number) => (x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));

function report(results: CaseResult[], meta: Meta): string {
  const L: string[] = [];
  const info = native().info();
  const to = meta.torchOpts;
  L.push('# Diffusion benchmark (CPU): sampling and training throughput vs PyTorch', '');
  L.push(`- command: \`${meta.command}\` (${meta.seconds.toFixed(0)} s)`);
  L.push(`- date: ${meta.date}`);
  L.push(`- machine: ${lscpu('Model name')}, nproc ${os.cpus().length} (${lscpu('Core(s) per socket')} core(s) per socket, ${lscpu('Thread(s) per core')} thread(s) per core), ${mib(os.totalmem())} MiB RAM, ${os.type()} ${os.release()}`);
  L.push(
    `- load average (1 / 5 / 15 min) before: ${meta.load.before.map((x) => x.toFixed(2)).join(' / ')}, after: ${meta.load.after.map((x) => x.toFixed(2)).join(' / ')}; ` +
      'the 1-minute load sampled at the start of each case and after each round is in the table.',
  );
  // Before the run, the load is other work's; during it, the benchmark's own threads count too.
  if (meta.load.before[0] > 1)
    L.push(
      `- **The machine was shared with other work during this run** (1-minute load ${meta.load.before[0].toFixed(2)} before it started, on ${os.cpus().length} CPUs). ` +
        'Absolute numbers are therefore low and noisy; the ratios are fairer, as the engines alternate block by block, but both engines lose to contention differently. Rerun the command on a quiet machine.',
    );
  else L.push(`- The machine was otherwise idle (1-minute load ${meta.load.before[0].toFixed(2)} before the run); the load during it is the engines' own threads.`);
  L.push(`- tdq-native: ${info.threads} threads, CPU level ${info.cpuLevel}; Node ${process.version}`);
  L.push(
    meta.torchInfo && to
      ? `- PyTorch ${meta.torchInfo.torch} (Debian python3-torch, /usr/bin/python3, oneDNN convolutions): ${meta.torchInfo.threads} threads (torch.set_num_threads(${to.threads}), OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = ${to.threads}), ` +
          (to.waitPolicy === 'passive'
            ? 'OMP_WAIT_POLICY=PASSIVE (on this loaded machine libgomp\'s default spin-waiting made PyTorch\'s 2-thread convolutions about 3x slower than PASSIVE; `--torch-wait-policy default` measures the default), '
            : "libgomp's default OMP_WAIT_POLICY, ") +
          'running the reference modules test/reference/openaimodel_ref.py (UNetModel) and ddpm_unet_ref.py (Model): same architecture and parameter names as ours (parameter counts checked equal)'
      : '- PyTorch: not run (--no-torch)',
  );
  L.push(
    `- sampling: DDIM (eta 0, uniform timesteps) from x_T ~ N(0, I), eval mode, no grad; ` +
      (meta.quick ? 'runs of a few DDIM steps (--quick), time scaled to 50 steps. ' : `a timed run is a whole ${DDIM_STEPS}-step sampling of the batch. `) +
      'PyTorch runs the same timesteps and DDIM coefficients (x <- c_x x + c_e eps(x, t)).',
  );
  L.push(
    "- training: a timed run is one step = eps-prediction loss (a random timestep and noise per sample, the config's L2 loss), forward + backward + gradient clipping at the config's grad_clip (1.0) + Adam step (config lr, betas, eps) + zero_grad, " +
      'in train mode (DDPM CIFAR-10: dropout 0.1), on a fixed random batch; the loss is read back each step. No EMA, no data loading.',
  );
  L.push(
    `- weights at random init (timing does not depend on values). Each case runs in a fresh node process and a fresh Python process; after warm-up, ${meta.rounds} round(s), a round being a block of timed runs of ours then a block of PyTorch's (PyTorch first in odd rounds). Medians over all timed runs.`,
  );
  L.push('');
  L.push('| case | batch | params | timed runs per engine | ours img/s | torch img/s | ours / torch (throughput) | ours / torch (images per CPU-second) | ours engine peak (MiB) | ours peak RSS (MiB) | torch peak RSS (MiB) | load (1 min) |');
  L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
  for (const r of results) {
    const s = r.spec;
    const o = imagesPerSecond(s, median(r.ours));
    const t = r.torch.length ? imagesPerSecond(s, median(r.torch)) : null;
    const what = s.mode === 'sample' ? `sampling, DDIM ${DDIM_STEPS}` : 'training';
    L.push(
      `| ${s.model} ${what} | ${s.batch} | ${(r.params / 1e6).toFixed(2)}M | ${r.ours.length} | ${fmt(o)} | ${t === null ? '–' : fmt(t)} | ${t === null ? '–' : (o / t).toFixed(2)} |` +
        ` ${r.torchCpu.length ? (median(r.torchCpu) / median(r.oursCpu)).toFixed(2) : '–'} |` +
        ` ${mib(r.oursEnginePeak)} | ${mib(r.oursPeakRss)} | ${r.torchPeakRss === null ? '–' : mib(r.torchPeakRss)} | ${r.loadavg.map((l) => l.toFixed(1)).join(', ')} |`,
    );
  }
  L.push('');
  L.push(
    'Ratios above 1 mean tdq-native is faster. The CPU-time ratio (median process CPU time, user + system over all threads, per run: torch / ours) measures work done rather than waiting, which a shared machine distorts less; ' +
      'it is not the whole story either, since time an engine spends descheduled in a barrier is not CPU time.',
  );
  L.push('');
  L.push('Timed runs, wall ms (CPU ms), ours | torch:');
  L.push('');
  const runs = (w: number[], c: number[]) => w.map((x, i) => `${x.toFixed(0)} (${c[i].toFixed(0)})`).join(', ') || '–';
  for (const r of results) L.push(`- ${r.spec.model} ${r.spec.mode}${meta.quick && r.spec.mode === 'sample' ? ` (${r.spec.steps} steps)` : ''}: ${runs(r.ours, r.oursCpu)} | ${runs(r.torch, r.torchCpu)}`);
  L.push('');
  L.push('Memory, what was measured:');
  L.push(
    '- ours engine peak: `native().memory().peakBytes` after `resetPeakMemory()` just before the model was built: the most bytes of tensor storage alive at once ' +
      '(weights, and for training gradients, Adam moments and the activations kept for backward) over warm-up and timed runs.',
  );
  L.push(
    "- ours peak RSS: the node process's peak resident set (`process.resourceUsage().maxRSS`) over the same span (Node, the addon and the engine's tensors; high-water mark reset through /proc/self/clear_refs before the model was built). " +
      `RSS of the fresh process before: ${results.map((r) => `${r.spec.model} ${r.spec.mode} ${mib(r.oursRssBefore)}`).join(', ')} MiB.`,
  );
  L.push(
    '- torch peak RSS: the Python process\'s peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), reset the same way after `import torch` and before the model was built, so it includes the interpreter and the torch libraries. ' +
      `RSS after import: ${results.map((r) => `${r.spec.model} ${r.spec.mode} ${r.torchRssBefore === null ? '–' : mib(r.torchRssBefore)}`).join(', ')} MiB. ` +
      "PyTorch 1.13's CPU allocator keeps no statistics, and tracemalloc does not see tensor storage (it tracks Python's allocator only), so RSS is the measure on that side.",
  );
  L.push('');
  L.push('## Where the time goes');
  L.push('');
  L.push(
    'Ours: `native().setProfiling(true)` during all the timed runs (cheap: two clock reads per op), time per op on the stream thread summed over those runs, and its share of the summed op time ' +
      '(the rest of the wall time is JS-side work and waiting for the stream). PyTorch: one extra, untimed run after the timed ones under `torch.autograd.profiler`, self CPU time per aten op ' +
      '(its share of the summed self time; that profiler adds overhead of its own, so its wall time is above the timed runs\'). Both are wall-clock times per op on a loaded machine: a short op can absorb a time slice spent descheduled. ' +
      'Ours names backward passes as separate ops; PyTorch\'s `convolution_backward` covers both input and weight gradients.',
  );
  for (const r of results) {
    const p = r.profile;
    if (!p) continue;
    const s = r.spec;
    const steps = (n: number) => (s.mode === 'sample' ? `${n} DDIM steps` : `${n} training step${n > 1 ? 's' : ''}`);
    L.push('', `### ${s.model} ${s.mode === 'sample' ? 'sampling' : 'training'}, batch ${s.batch}`, '');
    L.push(
      `ours: ${r.ours.length} timed runs (${steps(r.ours.length * s.steps)}), wall ${p.oursWall.toFixed(2)} s, op time ${p.oursOpSeconds.toFixed(2)} s (${((100 * p.oursOpSeconds) / p.oursWall).toFixed(0)}% of wall)` +
        (p.torch ? `; torch: one run of ${steps(s.profileSteps)}, wall ${p.torchWall.toFixed(2)} s (profiler on), self op time ${p.torchSelfSeconds.toFixed(2)} s` : ''),
    );
    L.push('');
    L.push('| ours op | calls | s | share | torch op | calls | s | share |');
    L.push('| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |');
    for (let i = 0; i < 10; ++i) {
      const o = p.ours[i], t = p.torch?.[i];
      const oc = o ? `${o.name} | ${o.calls} | ${o.seconds.toFixed(3)} | ${((100 * o.seconds) / p.oursOpSeconds).toFixed(1)}%` : ' | | | ';
      const tc = t ? `${t.name} | ${t.calls} | ${t.seconds.toFixed(3)} | ${((100 * t.seconds) / p.torchSelfSeconds).toFixed(1)}%` : ' | | | ';
      if (o || t) L.push(`| ${oc} | ${tc} |`);
    }
  }
  L.push('');
  return L.join('\n');
}

interface Meta {
  command: string;
  date: string;
  threads: number;
  torchOpts: TorchOptions | null;
  torchInfo: { torch: string; threads: number } | null;
  quick: boolean;
  rounds: number;
  seconds: number;
  load: { before: number[]; after: number[] };
}

const RESULT_PREFIX = 'BENCH_CASE_RESULT ';

/** Runs case `index` in a fresh node process (this script with --case), so its peak RSS is its own. */
function runCaseInChild(index: number): Promise<CaseResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [__filename, ...process.argv.slice(2), '--case', String(index)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let result: CaseResult | null = null;
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      if (l.startsWith(RESULT_PREFIX)) result = JSON.parse(l.slice(RESULT_PREFIX.length)) as CaseResult;
      else console.log(l);
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 && result ? resolve(result) : reject(new Error(`case ${index} failed (exit code ${code})`))));
  });
}

async function main(): Promise<void> {
  const a = benchArgs(USAGE, OPTIONS, (a) => {
    const quick = a.flag('quick'), threads = a.int('threads', 1);
    return {
      quick, threads, rounds: a.optInt('rounds', 1) ?? (quick ? 1 : 2),
      torchThreads: a.optInt('torch-threads', 1) ?? threads, waitPolicy: a.choice('torch-wait-policy', WAIT_POLICIES),
      noTorch: a.flag('no-torch'), profile: !a.flag('no-profile'), caseIndex: a.optInt('case'), outArg: a.get('out'),
    };
  });
  const { quick, rounds, threads, waitPolicy, outArg } = a;
  const torchOpts: TorchOptions | null = a.noTorch ? null : { threads: a.torchThreads, waitPolicy };
  native().setThreads(threads);
  const all = cases(quick);

  if (a.caseIndex !== undefined) {
    if (a.caseIndex >= all.length) throw new RangeError(`--case ${a.caseIndex}: there are ${all.length} cases`);
    const r = await runCase(all[a.caseIndex], rounds, torchOpts, a.profile);
    console.log(RESULT_PREFIX + JSON.stringify(r));
    return;
  }

  const outFile = outArg ? path.resolve(outArg) : quick ? null : path.join(packageRoot, 'bench', 'results', 'diffusion-cpu.md');
  const loadBefore = os.loadavg();
  const date = new Date().toISOString();
  let torchInfo: { torch: string; threads: number } | null = null;
  if (torchOpts) {
    const t = torchServer(torchOpts);
    torchInfo = await t.call<{ torch: string; threads: number }>({ info: true });
    await t.close();
  }
  const t0 = Date.now();
  const results: CaseResult[] = [];
  for (let i = 0; i < all.length; ++i) results.push(await runCaseInChild(i));
  const seconds = (Date.now() - t0) / 1e3;
  console.log(`total ${seconds.toFixed(0)} s`);
  const command = `node dist/bench/diffusion.js${process.argv.slice(2).map((a) => ' ' + a).join('')}`;
  const text = report(results, { command, date, threads, torchOpts, torchInfo, quick, rounds, seconds, load: { before: loadBefore, after: os.loadavg() } });
  if (outFile) {
    fs.mkdirSync(path.dirname(outFile), { recursive: true });
    fs.writeFileSync(outFile, text);
    console.log(`wrote ${outFile}`);
  } else {
    console.log(text);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
