// The LSUN-Churches LDM (configs/ldm-churches.yaml: the 295M-parameter UNet
// and the KL-f8 decoder) at batch 1, 256 x 256: seconds per image for DDIM-50,
// this engine against PyTorch running the restated upstream modules
// (bench/ldm_churches_torch.py) on the same weights, side by side in one run,
// with both sides' peak resident memory.
//
//   /usr/bin/python3 bench/make_ldm_churches_ckpt.py /work/bench-cache/ldm-churches-random.ckpt
//   npm run build:ts
//   node dist/bench/ldm_churches.js [--ckpt /work/bench-cache/ldm-churches-random.ckpt]
//       [--steps 3] [--rounds 2] [--threads 2] [--no-cli] [--out bench/results/ldm-churches.md]
//
// Weights: random (pretrained ones cannot be downloaded here), from the .ckpt
// that bench/make_ldm_churches_ckpt.py writes; both sides load that file
// (ours through loadLatentModel, PyTorch through torch.load). Each round runs
// the first --steps steps of the DDIM-50 schedule (uniform: t = 981, 961, ...,
// eta 0) from the same x_T and one decode, ours and PyTorch's alternating
// which goes first; seconds per image = 50 x the median step time + the
// median decode time (a whole DDIM-50 run is ~50 x longer and the step time
// does not depend on t). The DDIM update is done in float64 on the host on
// both sides, so the outputs differ by the models alone: eps of the first
// step, the latent after --steps steps, and the decoded image (each side
// decoding its own latent) are compared (relative 2-norm).
//
// Memory: the peak resident set (VmHWM, reset through /proc/self/clear_refs)
// of each process for the load and for sampling; with --cli (default) also
// the peak of the `tdq-native convert` and `sample` commands on that file
// (/usr/bin/time -v, each a fresh process).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { makeDdimTimesteps, ddimSamplingParameters } from '../src/diffusion/samplers/ddim';
import { loadLatentModel } from '../src/models/load_latent';
import { noGrad } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { fromArray } from '../src/tensor/tensor';
import { benchArgs, commonOptions } from './args';
import { TorchServer } from './torch_client';

const CONFIG = 'configs/ldm-churches.yaml';
const FULL_STEPS = 50;

const USAGE = 'node dist/bench/ldm_churches.js [--ckpt /work/bench-cache/ldm-churches-random.ckpt] [--steps 3] [--rounds 2] [--threads 2] [--no-cli] [--out bench/results/ldm-churches.md]';
const OPTIONS = {
  ckpt: { type: 'string', value: 'FILE', default: '/work/bench-cache/ldm-churches-random.ckpt', help: 'the .ckpt of bench/make_ldm_churches_ckpt.py' },
  steps: { type: 'string', value: 'N', default: '3', help: 'DDIM steps timed per round (of the DDIM-50 schedule)' },
  rounds: { type: 'string', value: 'N', default: '2', help: 'rounds, ours and PyTorch alternating' },
  threads: commonOptions.threads(),
  'no-cli': { type: 'boolean', help: 'skip the peak memory of the convert and sample commands' },
  out: commonOptions.report('ldm-churches.md'),
} as const;
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const now = () => Number(process.hrtime.bigint()) / 1e6;
const MiB = (b: number) => (b / 2 ** 20).toFixed(0);

function statusBytes(key: string): number {
  const m = fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(`${key}:\\s+(\\d+)`));
  return m ? Number(m[1]) * 1024 : -1;
}
function resetPeak(): void {
  fs.writeFileSync('/proc/self/clear_refs', '5');
}

function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; ++i) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(d / n);
}

/** Peak RSS and wall time of a tdq-native command (a fresh process), from /usr/bin/time -v. */
function timedCli(args: string[]): { peak: number; seconds: number; ok: boolean; tail: string } {
  const r = spawnSync('/usr/bin/time', ['-v', process.execPath, path.join(packageRoot, 'bin', 'tdq-native.js'), ...args], { encoding: 'utf8', cwd: packageRoot });
  const peak = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr)?.[1] ?? NaN) * 1024;
  const el = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)/.exec(r.stderr)?.[1] ?? '';
  const seconds = el.split(':').reduce((s, p) => s * 60 + Number(p), 0);
  return { peak, seconds, ok: r.status === 0, tail: `${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-3).join(' / ') };
}

async function main(): Promise<void> {
  const { ckpt, steps, rounds, threads, noCli, out } = benchArgs(USAGE, OPTIONS, (a) => ({
    ckpt: path.resolve(a.str('ckpt')), steps: a.int('steps', 1), rounds: a.int('rounds', 1), threads: a.int('threads', 1), noCli: a.flag('no-cli'), out: path.resolve(a.str('out')),
  }));
  if (!fs.existsSync(ckpt)) throw new Error(`${ckpt} not found: make it with /usr/bin/python3 bench/make_ldm_churches_ckpt.py ${ckpt}`);
  const loadavg: number[] = [os.loadavg()[0]];
  const lines: string[] = [];
  const log = (s: string) => {
    console.log(s);
    lines.push(s);
  };

  // ---- the commands' peak memory (fresh processes, nothing else loaded) ----
  const cli: string[] = [];
  if (!noCli) {
    const st = path.join(path.dirname(ckpt), `${path.basename(ckpt, path.extname(ckpt))}.safetensors`);
    const tmpOut = fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-churches-'));
    const runs: [string, string[]][] = [
      [`convert ${path.basename(ckpt)} ${path.basename(st)}`, ['convert', ckpt, st]],
      [`sample --ckpt ${path.basename(ckpt)} (1 image, DDIM 2 steps)`, ['sample', '--base', CONFIG, '--ckpt', ckpt, '-n', '1', '--batch-size', '1', '--steps', '2', '--threads', String(threads), '--progress', 'false', '-o', tmpOut]],
      [`sample --ckpt ${path.basename(st)} (1 image, DDIM 2 steps)`, ['sample', '--base', CONFIG, '--ckpt', st, '-n', '1', '--batch-size', '1', '--steps', '2', '--threads', String(threads), '--progress', 'false', '-o', tmpOut]],
    ];
    for (const [what, a] of runs) {
      const r = timedCli(a);
      if (!r.ok) throw new Error(`tdq-native ${a.join(' ')} failed: ${r.tail}`);
      cli.push(`| \`${what}\` | ${MiB(r.peak)} | ${r.seconds.toFixed(1)} |`);
      console.log(cli[cli.length - 1]);
      loadavg.push(os.loadavg()[0]);
    }
    fs.rmSync(tmpOut, { recursive: true, force: true });
  }

  // ---- load both ----
  native().setThreads(threads);
  const torch = new TorchServer('ldm_churches_torch.py', threads, 'passive');
  const fileBytes = fs.statSync(ckpt).size;
  resetPeak();
  const rss0 = statusBytes('VmRSS');
  let t0 = now();
  const loaded = await loadLatentModel(ckpt, { config: path.join(packageRoot, CONFIG) });
  const oursLoadS = (now() - t0) / 1000;
  const oursLoadPeak = statusBytes('VmHWM'), oursLoaded = statusBytes('VmRSS');
  const spec = loaded.spec;
  const model = loaded.model;
  const unetParams = model.model.parameters().reduce((n, t) => n + t.size, 0);
  const fsParams = model.firstStageModel.parameters().reduce((n, t) => n + t.size, 0);
  await torch.call({ reset_peak: true });
  const tinfo = await torch.call<{ params_unet: number; params_first_stage: number; scale_factor: number; seconds: number; torch: string; threads: number; peak_rss_bytes: number; rss_bytes: number }>({
    load: ckpt, unet: spec.unet, ddconfig: spec.firstStage.ddconfig, embed_dim: spec.firstStage.embedDim,
  });
  loadavg.push(os.loadavg()[0]);
  console.log(`loaded: ours ${oursLoadS.toFixed(1)} s, peak ${MiB(oursLoadPeak)} MiB; torch ${tinfo.seconds.toFixed(1)} s, peak ${MiB(tinfo.peak_rss_bytes)} MiB`);

  // ---- the DDIM-50 schedule's first `steps` steps ----
  const ts = makeDdimTimesteps('uniform', FULL_STEPS, model.schedule.numTimesteps);
  const p = ddimSamplingParameters(model.schedule.alphasCumprod, ts, 0);
  const plan: [number, number, number][] = [];
  for (let k = ts.length - 1; k >= 0 && plan.length < steps; --k) plan.push([ts[k], p.alphas[k], p.alphasPrev[k]]);
  const [c, h, w] = [spec.unet.in_channels, spec.imageSize, spec.imageSize];
  const xT = Float32Array.from((new Generator(1).randn([1, c, h, w]).dataSync() as Float32Array));

  const oursDdim = async () => {
    let x = Float64Array.from(xT);
    const stepMs: number[] = [];
    let eps0: Float32Array | undefined;
    for (const [t, a, ap] of plan) {
      const s0 = now();
      const xt = fromArray(Float32Array.from(x), [1, c, h, w]);
      const tt = fromArray([t], [1]);
      const e = noGrad(() => model.applyModel(xt, tt));
      const eps = (await e.data()) as Float32Array;
      e.dispose();
      xt.dispose();
      tt.dispose();
      const nx = new Float64Array(x.length);
      for (let i = 0; i < x.length; ++i) {
        const x0 = (x[i] - Math.sqrt(1 - a) * eps[i]) / Math.sqrt(a);
        nx[i] = Math.sqrt(ap) * x0 + Math.sqrt(1 - ap) * eps[i];
      }
      x = nx;
      stepMs.push(now() - s0);
      eps0 ??= Float32Array.from(eps);
    }
    return { stepMs, eps0: eps0!, z: x };
  };
  const oursDecode = async (z: Float64Array) => {
    const s0 = now();
    const zt = fromArray(Float32Array.from(z), [1, c, h, w]);
    const img = model.decode(zt);
    const data = Float32Array.from((await img.data()) as Float32Array);
    img.dispose();
    zt.dispose();
    return { ms: now() - s0, image: data };
  };

  const ours = { step: [] as number[], decode: [] as number[] };
  const theirs = { step: [] as number[], decode: [] as number[] };
  const diffs: { eps: number; z: number; image: number }[] = [];
  const roundLoad: number[] = [];
  resetPeak();
  native().resetPeakMemory();
  await torch.call({ reset_peak: true });
  for (let r = 0; r < rounds; ++r) {
    let o: Awaited<ReturnType<typeof oursDdim>> | undefined, od: Awaited<ReturnType<typeof oursDecode>> | undefined;
    let tq: { step_ms: number[]; eps0: number[]; z: number[] } | undefined, td: { ms: number; image: number[] } | undefined;
    const runOurs = async () => {
      o = await oursDdim();
      od = await oursDecode(o.z);
    };
    const runTorch = async () => {
      tq = await torch.call({ ddim: { x: Array.from(xT), shape: [c, h, w], steps: plan } });
      td = await torch.call({ decode: { z: tq!.z, shape: [c, h, w] } });
    };
    if (r % 2 === 0) {
      await runOurs();
      await runTorch();
    } else {
      await runTorch();
      await runOurs();
    }
    ours.step.push(...o!.stepMs);
    ours.decode.push(od!.ms);
    theirs.step.push(...tq!.step_ms);
    theirs.decode.push(td!.ms);
    diffs.push({ eps: relDiff(o!.eps0, tq!.eps0), z: relDiff(o!.z, tq!.z), image: relDiff(od!.image, td!.image) });
    roundLoad.push(os.loadavg()[0]);
    console.log(`round ${r + 1}: ours steps ${o!.stepMs.map((v) => v.toFixed(0)).join(',')} ms, decode ${od!.ms.toFixed(0)} ms; torch steps ${tq!.step_ms.map((v) => v.toFixed(0)).join(',')} ms, decode ${td!.ms.toFixed(0)} ms; rel diff eps ${diffs[r].eps.toExponential(2)}, z ${diffs[r].z.toExponential(2)}, image ${diffs[r].image.toExponential(2)}; load ${os.loadavg()[0].toFixed(1)}`);
  }
  const oursSamplePeak = statusBytes('VmHWM');
  const engine = native().memory();
  const tmem = await torch.call<{ peak_rss_bytes: number; rss_bytes: number }>({ memory: true });
  await torch.close();
  loaded.dispose();
  loadavg.push(os.loadavg()[0]);

  const perImage = (s: { step: number[]; decode: number[] }) => (FULL_STEPS * median(s.step) + median(s.decode)) / 1000;
  const oi = perImage(ours), ti = perImage(theirs);
  const cpu = os.cpus()[0]?.model?.trim();
  const cmd = `node dist/bench/ldm_churches.js --ckpt ${ckpt} --steps ${steps} --rounds ${rounds} --threads ${threads}${noCli ? ' --no-cli' : ''}`;
  lines.length = 0;
  log('# LSUN-Churches LDM: DDIM-50 at batch 1, 256 x 256, ours vs PyTorch');
  log('');
  log(`- command: \`${cmd}\``);
  log(`- checkpoint: \`${path.basename(ckpt)}\` (${MiB(fileBytes)} MiB, random weights from bench/make_ldm_churches_ckpt.py: UNet ${unetParams} parameters, first stage ${fsParams}; PyTorch counts ${tinfo.params_unet} and ${tinfo.params_first_stage})`);
  log(`- date: ${new Date().toISOString()}, machine: ${cpu}, ${os.cpus().length} cores, ${MiB(os.totalmem())} MiB RAM, shared with other work; load average (1 min) ${loadavg.map((v) => v.toFixed(1)).join(', ')} across the run; per round ${roundLoad.map((v) => v.toFixed(1)).join(', ')}`);
  log(`- engine: ${threads} threads, cpuLevel ${native().info().cpuLevel}; PyTorch ${tinfo.torch} (Debian), ${tinfo.threads} threads, OMP_WAIT_POLICY=PASSIVE; both fp32, no grad`);
  log(`- method: ${rounds} interleaved rounds (ours first in odd rounds), each the first ${steps} steps of DDIM-50 (uniform, eta 0; t = ${plan.map((q) => q[0]).join(', ')}) from the same x_T plus one decode of the result; seconds / image = 50 x median step + median decode (measured ${steps} of the 50 steps, scaled)`);
  log('');
  log('| | ours | PyTorch | ours / PyTorch |');
  log('|---|---:|---:|---:|');
  log(`| UNet step (ms, median of ${ours.step.length}) | ${median(ours.step).toFixed(0)} | ${median(theirs.step).toFixed(0)} | ${(median(ours.step) / median(theirs.step)).toFixed(2)} |`);
  log(`| KL-f8 decode 32x32x4 -> 256x256x3 (ms, median of ${ours.decode.length}) | ${median(ours.decode).toFixed(0)} | ${median(theirs.decode).toFixed(0)} | ${(median(ours.decode) / median(theirs.decode)).toFixed(2)} |`);
  log(`| **seconds per image, DDIM-50** | **${oi.toFixed(1)}** | **${ti.toFixed(1)}** | **${(oi / ti).toFixed(2)}** |`);
  log(`| load the .ckpt (s) | ${oursLoadS.toFixed(1)} | ${tinfo.seconds.toFixed(1)} | |`);
  log(`| peak RSS, load (MiB) | ${MiB(oursLoadPeak)} (from ${MiB(rss0)}; ${MiB(oursLoaded)} after) | ${MiB(tinfo.peak_rss_bytes)} (${MiB(tinfo.rss_bytes)} after) | |`);
  log(`| peak RSS, sampling + decode (MiB) | ${MiB(oursSamplePeak)} (engine: live tensors at most ${MiB(engine.peakBytes)}, freed-buffer cache ${MiB(engine.cachedBytes)} at the end) | ${MiB(tmem.peak_rss_bytes)} | |`);
  log('');
  log(`Outputs (relative 2-norm, ours vs PyTorch, worst round): eps of the first step ${Math.max(...diffs.map((d) => d.eps)).toExponential(2)}, latent after ${steps} steps ${Math.max(...diffs.map((d) => d.z)).toExponential(2)}, decoded image ${Math.max(...diffs.map((d) => d.image)).toExponential(2)}.`);
  log('');
  log('PyTorch loads with torch.load (the whole state dict in memory) and then copies it into the modules, so its load peak holds the weights twice; ours builds the model and streams the file into it tensor by tensor (src/io/checkpoint_file.ts openTensorFile, loadLatentModel).');
  if (cli.length) {
    log('');
    log('## The commands on this checkpoint (fresh processes, /usr/bin/time -v)');
    log('');
    log('| command | peak RSS (MiB) | wall (s) |');
    log('|---|---:|---:|');
    for (const l of cli) log(l);
  }
  log('');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, lines.join('\n'));
  console.log(`wrote ${out}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
