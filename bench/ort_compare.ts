// fp32 UNet forward: this engine against onnxruntime-node on the same
// architecture and weights, in interleaved rounds.
//
//   npm run build:ts && (cd bench/ort && npm install --ignore-scripts)
//   node dist/bench/ort_compare.js [--cases ddpm-b1,ddpm-b8,churches-b1]
//       [--rounds 9] [--threads 2] [--out bench/results/fp32-vs-ort.md] [--no-profile]
//
// Weights: bench/ort_export.py builds the reference UNet (test/reference, the
// same architecture and parameter names as ours), perturbs its random init and
// writes model.onnx + model.safetensors to bench/.cache/ort/<model>/ (made
// once, reused). Both engines get the same x (seeded) and t, run with the same
// thread count; outputs must agree to 1e-5 (relative 2-norm) or the case
// fails. Each round times one forward of each (order alternating per round,
// the output read back to JS in both); medians over rounds and the median of
// the per-round ratios are reported: on a shared machine the ratio of
// neighbouring runs is the number to trust. A profiled extra run of ours
// gives per-op times (native setProfiling).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { readSafetensors } from '../src/io/safetensors';
import { buildUNet } from '../src/models/diffusion';
import { noGrad } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { fromArray } from '../src/tensor/tensor';

interface OrtModule {
  InferenceSession: {
    create(file: string, opts: Record<string, unknown>): Promise<{
      run(feeds: Record<string, unknown>): Promise<Record<string, { data: Float32Array }>>;
    }>;
  };
  Tensor: new (type: string, data: Float32Array | BigInt64Array, dims: number[]) => unknown;
}

interface CaseSpec {
  name: string;
  config: string;
  batch: number;
}
const CASES: CaseSpec[] = [
  { name: 'ddpm-b1', config: 'configs/ddpm-cifar10.yaml', batch: 1 },
  { name: 'ddpm-b8', config: 'configs/ddpm-cifar10.yaml', batch: 8 },
  { name: 'churches-b1', config: 'configs/ldm-churches.yaml', batch: 1 },
];
const TOL = 1e-5;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const now = () => Number(process.hrtime.bigint()) / 1e6;

function loadOrt(): OrtModule {
  const dir = path.join(packageRoot, 'bench', 'ort', 'node_modules', 'onnxruntime-node');
  if (!fs.existsSync(dir)) throw new Error(`onnxruntime-node is not installed: run 'npm install --ignore-scripts' in bench/ort`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(dir) as OrtModule;
}

function unetOf(configFile: string): { model: 'ddpm' | 'openai'; target: string; params: Record<string, unknown>; shape: [number, number, number] } {
  const { config } = loadConfig(path.join(packageRoot, configFile), { purpose: 'model' });
  const u = config.model.params.unet_config as unknown as { target: string; params: Record<string, unknown> };
  const p = u.params;
  const ddpm = u.target.endsWith('DDPMUNet');
  const shape: [number, number, number] = ddpm
    ? [p.in_channels as number, p.resolution as number, p.resolution as number]
    : [p.in_channels as number, p.image_size as number, p.image_size as number];
  return { model: ddpm ? 'ddpm' : 'openai', target: u.target, params: p, shape };
}

function exportModel(configFile: string): string {
  const u = unetOf(configFile);
  const dir = path.join(packageRoot, 'bench', '.cache', 'ort', path.basename(configFile, '.yaml'));
  if (!fs.existsSync(path.join(dir, 'model.onnx')) || !fs.existsSync(path.join(dir, 'model.safetensors'))) {
    const spec = JSON.stringify({ model: u.model, unet: u.params, seed: 0, shape: u.shape });
    console.error(`exporting ${configFile} -> ${dir}`);
    execFileSync('/usr/bin/python3', [path.join(packageRoot, 'bench', 'ort_export.py'), spec, dir], { stdio: 'inherit' });
  }
  return dir;
}

interface Row {
  name: string;
  params: number;
  relErr: number;
  ours: number[];
  ort: number[];
  ratios: number[];
  /** process CPU time (user + system, all threads) of each run */
  oursCpu: number[];
  ortCpu: number[];
  profile: [string, number, number][] | null;
}

async function runCase(ort: OrtModule, spec: CaseSpec, rounds: number, threads: number, withProfile: boolean, ortSpin: boolean): Promise<Row> {
  const u = unetOf(spec.config);
  const dir = exportModel(spec.config);
  const unet = buildUNet({ target: u.target, params: u.params }, new Generator(0));
  const { tensors } = await readSafetensors(path.join(dir, 'model.safetensors'));
  unet.loadStateDict(tensors, { strict: true });
  for (const t of tensors.values()) t.dispose();
  unet.eval();
  const params = unet.numParameters();
  const [c, h, w] = u.shape;
  const n = spec.batch * c * h * w;
  const gen = new Generator(123);
  const xt = gen.randn([spec.batch, c, h, w]);
  const xData = (await xt.data()) as Float32Array;
  xt.dispose();
  const tv = Array.from({ length: spec.batch }, (_, i) => (37 + 113 * i) % 1000);
  const session = await ort.InferenceSession.create(path.join(dir, 'model.onnx'), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    // Spinning intra-op threads lose badly when the machine is oversubscribed
    // (a shared box): off unless --ort-spin, recorded in the results.
    extra: { session: { intra_op: { allow_spinning: ortSpin ? '1' : '0' }, inter_op: { allow_spinning: ortSpin ? '1' : '0' } } },
  });
  const feeds = {
    x: new ort.Tensor('float32', xData, [spec.batch, c, h, w]),
    t: new ort.Tensor('int64', BigInt64Array.from(tv.map((v) => BigInt(v))), [spec.batch]),
  };
  const runOurs = async (): Promise<Float32Array> =>
    noGrad(() => {
      const x = fromArray(xData, [spec.batch, c, h, w]);
      const t = fromArray(tv, [spec.batch]);
      const y = unet.forward(x, t);
      x.dispose();
      t.dispose();
      return y;
    }).data().then((d) => d as Float32Array);
  const runOrt = async (): Promise<Float32Array> => (await session.run(feeds)).eps.data;

  // correctness (also the warm-up of both)
  const a = await runOurs(), b = await runOrt();
  if (a.length !== n || b.length !== n) throw new Error(`${spec.name}: output sizes ${a.length} / ${b.length}, expected ${n}`);
  let num = 0, den = 0;
  for (let i = 0; i < n; ++i) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
  const relErr = Math.sqrt(num / den);
  if (!(relErr <= TOL)) throw new Error(`${spec.name}: outputs differ, relative error ${relErr.toExponential(2)} > ${TOL}`);
  await runOurs();
  await runOrt();

  const ours: number[] = [], ortMs: number[] = [], ratios: number[] = [], oursCpu: number[] = [], ortCpu: number[] = [];
  const cpuMs = (c: NodeJS.CpuUsage) => (c.user + c.system) / 1e3;
  for (let r = 0; r < rounds; ++r) {
    let o = 0, p = 0;
    for (const which of r % 2 ? ['ort', 'ours'] : ['ours', 'ort']) {
      const t0 = now(), c0 = process.cpuUsage();
      if (which === 'ours') await runOurs();
      else await runOrt();
      const cpu = cpuMs(process.cpuUsage(c0));
      if (which === 'ours') (o = now() - t0), oursCpu.push(cpu);
      else (p = now() - t0), ortCpu.push(cpu);
    }
    ours.push(o), ortMs.push(p), ratios.push(o / p);
  }
  let profile: Row['profile'] = null;
  if (withProfile) {
    native().setProfiling(true);
    native().profile(); // clear what came before
    const reps = 3;
    for (let i = 0; i < reps; ++i) await runOurs();
    const prof = native().profile();
    native().setProfiling(false);
    profile = Object.entries(prof)
      .map(([k, v]) => [k, v.calls / reps, (v.seconds * 1e3) / reps] as [string, number, number])
      .sort((x, y) => y[2] - x[2]);
  }
  unet.dispose();
  return { name: spec.name, params, relErr, ours, ort: ortMs, ratios, oursCpu, ortCpu, profile };
}

async function main(): Promise<void> {
  const want = arg('cases', CASES.map((c) => c.name).join(',')).split(',');
  const rounds = Number(arg('rounds', '9'));
  const threads = Number(arg('threads', '2'));
  const out = arg('out', '');
  const withProfile = !process.argv.includes('--no-profile');
  const ortSpin = process.argv.includes('--ort-spin');
  native().setThreads(threads);
  const ort = loadOrt();
  const rows: Row[] = [];
  const load0 = os.loadavg();
  for (const spec of CASES.filter((c) => want.includes(c.name))) {
    const r = await runCase(ort, spec, rounds, threads, withProfile, ortSpin);
    rows.push(r);
    console.log(`${r.name}: ours ${median(r.ours).toFixed(1)} ms, ort ${median(r.ort).toFixed(1)} ms, ratio ${median(r.ratios).toFixed(2)}; cpu ours ${median(r.oursCpu).toFixed(1)} ort ${median(r.ortCpu).toFixed(1)} (rel err ${r.relErr.toExponential(2)})`);
  }
  const load1 = os.loadavg();
  const cpu = (() => {
    try {
      const l = execFileSync('lscpu', { encoding: 'utf8' });
      const model = /Model name:\s*(.*)/.exec(l)?.[1] ?? '?';
      const flags = /Flags:\s*(.*)/.exec(l)?.[1].split(/\s+/) ?? [];
      return `${model}; ${os.cpus().length} CPUs; flags: ${['avx2', 'avx512f', 'avx512_vnni', 'amx_tile', 'amx_bf16'].map((f) => `${f} ${flags.includes(f) ? 'yes' : 'no'}`).join(', ')}`;
    } catch {
      return os.cpus()[0]?.model ?? '?';
    }
  })();
  const ortVersion = (JSON.parse(fs.readFileSync(path.join(packageRoot, 'bench', 'ort', 'node_modules', 'onnxruntime-node', 'package.json'), 'utf8')) as { version: string }).version;
  const lines: string[] = [];
  lines.push(`Command: \`node dist/bench/ort_compare.js ${process.argv.slice(2).join(' ')}\``);
  lines.push('');
  lines.push(`CPU: ${cpu}. Engine level ${native().info().cpuLevel}, ${threads} threads both sides; onnxruntime-node ${ortVersion} (intra-op ${threads}, sequential, all graph optimizations, thread spinning ${ortSpin ? 'on' : 'off'}).`);
  lines.push(`Load average (1/5/15 min) at start ${load0.map((v) => v.toFixed(2)).join(' / ')}, at end ${load1.map((v) => v.toFixed(2)).join(' / ')} (shared machine: the per-round ratio is the number to trust).`);
  lines.push(`${rounds} interleaved rounds (order alternating), one forward each, output read back; outputs checked equal to ${TOL} (relative 2-norm) first.`);
  lines.push('');
  lines.push('| case | params | ours median ms | ORT median ms | ratio ours/ORT (median of rounds) | ours CPU ms | ORT CPU ms | CPU ratio | rel. error |');
  lines.push('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows)
    lines.push(`| ${r.name} | ${(r.params / 1e6).toFixed(1)}M | ${median(r.ours).toFixed(1)} | ${median(r.ort).toFixed(1)} | ${median(r.ratios).toFixed(2)} | ${median(r.oursCpu).toFixed(1)} | ${median(r.ortCpu).toFixed(1)} | ${(median(r.oursCpu) / median(r.ortCpu)).toFixed(2)} | ${r.relErr.toExponential(1)} |`);
  lines.push('');
  lines.push('CPU ms: process CPU time (user + system, all threads) per forward, median; with ORT spinning off it is the work each side does, less sensitive to the load than wall time.');
  for (const r of rows) {
    if (!r.profile) continue;
    const total = r.profile.reduce((s, p) => s + p[2], 0);
    lines.push('');
    lines.push(`Profile of ours, ${r.name} (per forward, mean of 3 profiled runs; op time inside the engine, total ${total.toFixed(1)} ms):`);
    lines.push('');
    lines.push('| op | calls | ms | share |');
    lines.push('|---|---|---|---|');
    for (const [k, calls, ms] of r.profile.slice(0, 12)) lines.push(`| ${k} | ${calls} | ${ms.toFixed(2)} | ${((100 * ms) / total).toFixed(1)}% |`);
  }
  const text = lines.join('\n') + '\n';
  console.log(text);
  if (out) fs.writeFileSync(path.join(packageRoot, out), text);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
