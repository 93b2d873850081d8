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
//
// --quant [--calib-samples 2] [--calib-steps 5] [--tdq-t 500]: the quantized
// comparison instead (issue 12's integer goal). Each case's UNet is quantized
// W8A8 twice by calibrate (static LSQ and TDQ, --calib-samples DDIM
// trajectories of --calib-steps steps from random noise, method auto; kept
// under $TDQ_ORT_CALIB_CACHE when that is set, and then read back, with their
// QDQ exports, by later runs), and six
// ways run in interleaved rounds (order rotated per round): ours fp32, ours
// static int, ours TDQ int (step table), ORT fp32, ORT QDQ and ORT QDQ+out.
// ORT QDQ is the static model exported by bench/ort_export.py "qdq": the
// fake-quantized torch reference, QuantizeLinear/DequantizeLinear on every
// quantized conv/linear input (integer zero points) and weight, opset 13; ORT
// leaves it unfused (float Conv on dequantized tensors). ORT QDQ+out adds a
// Q/DQ on each quantized layer's output (ORT's static-quantization form), which
// ORT fuses into QLinearConv: faster, but an extra quantization our model has
// not. Checks first: each ORT output against our fake-quantized one, with the
// exact-zero-point exports (static, and TDQ at --tdq-t) held to
// max(5e-2, 2 x our own int-vs-fake difference); ORT's optimized models are
// saved and their nodes counted by op type. Case fmnist-b8 is the shipped
// model (models/fmnist-small) with its own weights.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors';
import { buildUNet } from '../src/models/diffusion';
import { loadModel } from '../src/models/load';
import { DEFAULT_MODEL } from '../src/pipeline';
import { calibrate } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import { type QuantizedModel, loadQuantized } from '../src/quant/quantize_model';
import { noGrad } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { tidy } from '../src/tensor/scope';
import { fromArray } from '../src/tensor/tensor';
import { BenchArgsError, benchArgs } from './args';

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
  /** a config file, or '' for the shipped model (its weights, not random ones) */
  config: string;
  batch: number;
}
const CASES: CaseSpec[] = [
  { name: 'fmnist-b8', config: '', batch: 8 },
  { name: 'ddpm-b1', config: 'configs/ddpm-cifar10.yaml', batch: 1 },
  { name: 'ddpm-b8', config: 'configs/ddpm-cifar10.yaml', batch: 8 },
  { name: 'churches-b1', config: 'configs/ldm-churches.yaml', batch: 1 },
];
const TOL = 1e-5;

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

type UNetSpec = { model: 'ddpm' | 'openai'; target: string; params: Record<string, unknown>; shape: [number, number, number]; timesteps: number };
function unetOf(configFile: string): UNetSpec {
  const { config } = loadConfig(path.join(packageRoot, configFile), { purpose: 'model' });
  return unetOfModelParams(config.model.params as unknown as Record<string, unknown>);
}

function unetOfModelParams(mp: Record<string, unknown>): UNetSpec {
  const u = mp.unet_config as unknown as { target: string; params: Record<string, unknown> };
  const p = u.params;
  const ddpm = u.target.endsWith('DDPMUNet');
  const shape: [number, number, number] = ddpm
    ? [p.in_channels as number, p.resolution as number, p.resolution as number]
    : [p.in_channels as number, p.image_size as number, p.image_size as number];
  return { model: ddpm ? 'ddpm' : 'openai', target: u.target, params: p, shape, timesteps: (mp.timesteps as number | undefined) ?? 1000 };
}

/** The case's UNet spec and the folder with model.onnx + model.safetensors (same weights; exported once). */
async function exportModel(configFile: string): Promise<{ u: UNetSpec; dir: string }> {
  if (configFile === '') {
    // the shipped model: its own weights, exported from its state dict
    const m = await loadModel(DEFAULT_MODEL);
    const u = unetOfModelParams(m.config.model.params as unknown as Record<string, unknown>);
    const dir = path.join(packageRoot, 'bench', '.cache', 'ort', path.basename(DEFAULT_MODEL, '.safetensors'));
    if (!fs.existsSync(path.join(dir, 'model.onnx')) || !fs.existsSync(path.join(dir, 'model.safetensors'))) {
      fs.mkdirSync(dir, { recursive: true });
      await writeSafetensors(path.join(dir, 'model.safetensors'), m.model.stateDict());
      const spec = JSON.stringify({ model: u.model, unet: u.params, seed: 0, shape: u.shape, weights: path.join(dir, 'model.safetensors') });
      console.error(`exporting ${DEFAULT_MODEL} -> ${dir}`);
      execFileSync('/usr/bin/python3', [path.join(packageRoot, 'bench', 'ort_export.py'), spec, dir], { stdio: 'inherit' });
    }
    m.dispose();
    return { u, dir };
  }
  const u = unetOf(configFile);
  const dir = path.join(packageRoot, 'bench', '.cache', 'ort', path.basename(configFile, '.yaml'));
  if (!fs.existsSync(path.join(dir, 'model.onnx')) || !fs.existsSync(path.join(dir, 'model.safetensors'))) {
    const spec = JSON.stringify({ model: u.model, unet: u.params, seed: 0, shape: u.shape });
    console.error(`exporting ${configFile} -> ${dir}`);
    execFileSync('/usr/bin/python3', [path.join(packageRoot, 'bench', 'ort_export.py'), spec, dir], { stdio: 'inherit' });
  }
  return { u, dir };
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
  const { u, dir } = await exportModel(spec.config);
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
  // In tidy(), as the samplers run each step: the intermediates are freed
  // when the forward returns and their buffers reused by the next one. Left
  // to the garbage collector, most of them were fresh mappings every forward
  // (about 10k page faults per DDPM batch-1 forward, charged to the ops that
  // first write them: 'add' took 10% of the profile).
  const runOurs = async (): Promise<Float32Array> => {
    const y = noGrad(() =>
      tidy(() => {
        const x = fromArray(xData, [spec.batch, c, h, w]);
        const t = fromArray(tv, [spec.batch]);
        return unet.forward(x, t);
      }),
    );
    const d = (await y.data()) as Float32Array;
    y.dispose();
    return d;
  };
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

// ---------------------------------------------------------------- --quant

const ORT_OPS = ['QLinearConv', 'QGemm', 'QLinearAdd', 'QLinearSigmoid', 'QLinearMul', 'ConvInteger', 'MatMulInteger', 'QLinearMatMul', 'MatMulIntegerToFloat', 'DynamicQuantizeLinear', 'QuantizeLinear', 'DequantizeLinear', 'Conv', 'FusedConv', 'NhwcFusedConv', 'MatMul', 'FusedMatMul', 'Gemm'];

/** Counts nodes by op_type in a serialized ONNX model: NodeProto.op_type is field 4 (tag 0x22), length-prefixed. */
function countOps(file: string): Record<string, number> {
  const buf = fs.readFileSync(file);
  const out: Record<string, number> = {};
  for (const op of ORT_OPS) {
    const pat = Buffer.concat([Buffer.from([0x22, op.length]), Buffer.from(op, 'latin1')]);
    let n = 0;
    for (let i = buf.indexOf(pat); i >= 0; i = buf.indexOf(pat, i + 1)) {
      // the next byte starts another field of the node (domain 0x3a, attribute 0x2a, doc 0x32...), not more name
      n++;
    }
    out[op] = n;
  }
  return out;
}

const relErr = (a: Float32Array, b: Float32Array) => {
  if (a.length !== b.length) throw new Error(`output sizes ${a.length} / ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; ++i) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
  return Math.sqrt(num / den);
};

interface QuantRow {
  name: string;
  params: number;
  ways: string[];
  ms: Map<string, number[]>;
  cpu: Map<string, number[]>;
  checks: [string, number][];
  ops: Record<string, number>;
  opsOut: Record<string, number>;
  layers: number;
  calib: string;
}

/** Tolerance of ORT's QDQ (exact zero points) against our fake-quantized output: level flips only. */
const QDQ_TOL = 5e-2;

async function runQuantCase(ort: OrtModule, spec: CaseSpec, o: { rounds: number; threads: number; ortSpin: boolean; calibSamples: number; calibSteps: number; tdqT: number }): Promise<QuantRow> {
  const { u, dir } = await exportModel(spec.config);
  const { tensors } = await readSafetensors(path.join(dir, 'model.safetensors'));
  const build = () => {
    const m = buildUNet({ target: u.target, params: u.params }, new Generator(0));
    m.loadStateDict(tensors, { strict: true });
    m.eval();
    return m;
  };
  const fp = build();
  const params = fp.numParameters();
  const [c, h, w] = u.shape;
  const schedule = { kind: 'linear' as const, timesteps: u.timesteps };
  const q: Record<'static' | 'tdq', QuantizedModel> = {} as Record<'static' | 'tdq', QuantizedModel>;
  const cachedCalib: Record<string, number> = {};  // kind -> mtime of the cached calibration read back
  for (const kind of ['static', 'tdq'] as const) {
    const t0 = now();
    // $TDQ_ORT_CALIB_CACHE: a folder keeping the calibrated models (keyed by case,
    // kind and calibration size), so that a timing run need not calibrate again
    const cacheDir = process.env.TDQ_ORT_CALIB_CACHE;
    const cached = cacheDir ? path.join(cacheDir, `${spec.name}-${kind}-${o.calibSamples}x${o.calibSteps}.safetensors`) : null;
    let qm: QuantizedModel;
    if (cached && fs.existsSync(cached)) {
      const f = await readSafetensors(cached);
      qm = loadQuantized(build(), f.metadata, f.tensors);
      for (const t of f.tensors.values()) t.dispose();
      cachedCalib[kind] = fs.statSync(cached).mtimeMs;
    } else {
      qm = await calibrate(build(), resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic: kind === 'tdq' }), {
        schedule, steps: o.calibSteps, nSamples: o.calibSamples, seed: 1, method: 'auto', fitIters: 200, sampleShape: [c, h, w],
      });
      if (kind === 'tdq') qm.buildTable();
      if (cached) {
        fs.mkdirSync(cacheDir!, { recursive: true });
        await writeSafetensors(cached, qm.stateDict(), qm.checkpointMetadata());
      }
    }
    if (kind === 'tdq') qm.useTable(true);
    qm.eval();
    q[kind] = qm;
    console.error(`${spec.name}: calibrated ${kind} in ${((now() - t0) / 1e3).toFixed(0)} s (${qm.layers.size} quantized layers)`);
  }
  for (const t of tensors.values()) t.dispose();
  // QDQ exports: static with ORT's integer zero points (timed), static exact (check), TDQ at one t (check)
  const exportQdq = async (qm: QuantizedModel, tag: string, zp: 'int' | 'exact', t: number | null, outQdq = false): Promise<string> => {
    const out0 = path.join(dir, `model-qdq-${tag}-${zp}${outQdq ? '-out' : ''}.onnx`);
    // a calibration read back from the cache: its export from an earlier run stands (newer than the calibration)
    const kind = qm === q.static ? 'static' : 'tdq';
    if (cachedCalib[kind] !== undefined && fs.existsSync(out0) && fs.statSync(out0).mtimeMs > cachedCalib[kind]) {
      console.error(`${spec.name}: reusing ${path.basename(out0)}`);
      return out0;
    }
    const ckpt = path.join(dir, `quant-${tag}.safetensors`);
    const sd = (qm.model as unknown as { stateDict(): Map<string, import('../src/tensor/tensor').Tensor> }).stateDict();
    if (![...sd.keys()].some((k) => k.endsWith('.weight_quant.step'))) throw new Error(`${spec.name}: the quantized UNet's state dict has no weight_quant keys`);
    await writeSafetensors(ckpt, sd);
    const out = path.join(dir, `model-qdq-${tag}-${zp}${outQdq ? '-out' : ''}.onnx`);
    const js = JSON.stringify({ model: u.model, unet: u.params, seed: 0, shape: u.shape, timesteps: u.timesteps, qdq: { ckpt, out, t, zp, out_qdq: outQdq } });
    const r = execFileSync('/usr/bin/python3', [path.join(packageRoot, 'bench', 'ort_export.py'), js, dir], { encoding: 'utf8' });
    console.error(`${spec.name}: exported ${path.basename(out)} ${r.trim()}`);
    return out;
  };
  const sessionOpts = (optimized?: string) => ({
    intraOpNumThreads: o.threads, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: o.ortSpin ? '1' : '0' }, inter_op: { allow_spinning: o.ortSpin ? '1' : '0' } } },
    ...(optimized ? { optimizedModelFilePath: optimized } : {}),
  });
  const qdqFile = await exportQdq(q.static, 'static', 'int', null);
  const optFile = qdqFile.replace(/\.onnx$/, '.optimized.onnx');
  const sFp = await ort.InferenceSession.create(path.join(dir, 'model.onnx'), sessionOpts());
  const sQdq = await ort.InferenceSession.create(qdqFile, sessionOpts(optFile));
  const ops = countOps(optFile);
  const qdqOutFile = await exportQdq(q.static, 'static', 'int', null, true);
  const optOutFile = qdqOutFile.replace(/\.onnx$/, '.optimized.onnx');
  const sQdqOut = await ort.InferenceSession.create(qdqOutFile, sessionOpts(optOutFile));
  const opsOut = countOps(optOutFile);

  const gen = new Generator(123);
  const xt = gen.randn([spec.batch, c, h, w]);
  const xData = (await xt.data()) as Float32Array;
  xt.dispose();
  const tv = Array.from({ length: spec.batch }, (_, i) => (37 + 113 * i) % u.timesteps);
  const feeds = (tt: number[]) => ({
    x: new ort.Tensor('float32', xData, [spec.batch, c, h, w]),
    t: new ort.Tensor('int64', BigInt64Array.from(tt.map((v) => BigInt(v))), [spec.batch]),
  });
  const ours = (m: { forward(x: import('../src/tensor/tensor').Tensor, t: import('../src/tensor/tensor').Tensor): import('../src/tensor/tensor').Tensor }, tt = tv) => async (): Promise<Float32Array> =>
    noGrad(() => {
      const x = fromArray(xData, [spec.batch, c, h, w]);
      const t = fromArray(tt, [spec.batch]);
      const y = m.forward(x, t);
      x.dispose();
      t.dispose();
      return y;
    }).data().then((d) => d as Float32Array);
  const runOrt = (s: Awaited<ReturnType<OrtModule['InferenceSession']['create']>>, tt = tv) => async (): Promise<Float32Array> => (await s.run(feeds(tt))).eps.data;

  // checks
  const checks: [string, number][] = [];
  const yFp = await ours(fp)();
  q.static.setExec('fake');
  const yFake = await ours(q.static)();
  q.static.setExec('int');
  const yInt = await ours(q.static)();
  const yOrtFp = await runOrt(sFp)();
  const yQdq = await runOrt(sQdq)();
  checks.push(['ours fake vs ours fp32 (size of the quantization error)', relErr(yFake, yFp)]);
  checks.push(['ours int vs ours fake (static)', relErr(yInt, yFake)]);
  checks.push(['ORT fp32 vs ours fp32', relErr(yOrtFp, yFp)]);
  checks.push(['ORT QDQ (integer zero points) vs ours fake (static)', relErr(yQdq, yFake)]);
  checks.push(['ORT QDQ+out (outputs quantized too: not our model) vs ours fake (static)', relErr(await runOrt(sQdqOut)(), yFake)]);
  {
    const f = await exportQdq(q.static, 'static', 'exact', null);
    const s = await ort.InferenceSession.create(f, sessionOpts());
    const e = relErr(await runOrt(s)(), yFake);
    checks.push(['ORT QDQ (exact real zero points, not fusable) vs ours fake (static)', e]);

  }
  {
    const tt = Array.from({ length: spec.batch }, () => o.tdqT);
    const f = await exportQdq(q.tdq, `tdq-t${o.tdqT}`, 'exact', o.tdqT);
    const s = await ort.InferenceSession.create(f, sessionOpts());
    q.tdq.setExec('fake');
    const a = await ours(q.tdq, tt)();
    q.tdq.setExec('int');
    const e = relErr(await runOrt(s, tt)(), a);
    checks.push([`ORT QDQ of TDQ at t=${o.tdqT} (exact zero points) vs ours TDQ fake at t=${o.tdqT}`, e]);

  }
  // ORT's exact QDQ differs from our fake quantization by level flips only
  // (x / s rounded in another order), which a deep random-weight network
  // amplifies the way it amplifies ours int vs fake: the tolerance is
  // QDQ_TOL or twice our own int-vs-fake difference, whichever is larger.
  const tol = Math.max(QDQ_TOL, 2 * relErr(yInt, yFake));
  const bad = checks.filter(([k, e]) => k.includes('exact') && !(e <= tol));
  checks.push([`tolerance of the exact-zero-point checks: max(${QDQ_TOL}, 2 x ours int vs fake) = ${tol.toExponential(2)}: ${bad.length ? 'FAILED' : 'passed'}`, tol]);
  const relFp = relErr(yOrtFp, yFp);
  if (!(relFp <= TOL)) throw new Error(`${spec.name}: ORT fp32 differs from ours: ${relFp.toExponential(2)} > ${TOL}`);
  for (const [k, e] of checks) console.error(`${spec.name}: ${k}: ${e.toExponential(2)}`);

  const ways: [string, () => Promise<Float32Array>][] = [
    ['ours fp32', ours(fp)],
    ['ours static int', ours(q.static)],
    ['ours TDQ int', ours(q.tdq)],
    ['ORT fp32', runOrt(sFp)],
    ['ORT QDQ (static)', runOrt(sQdq)],
    ['ORT QDQ+out (static)', runOrt(sQdqOut)],
  ];
  for (const [, f] of ways) await f(); // warm-up (packs our int weights)
  const ms = new Map<string, number[]>(ways.map(([n]) => [n, []]));
  const cpu = new Map<string, number[]>(ways.map(([n]) => [n, []]));
  for (let r = 0; r < o.rounds; ++r) {
    // rotate the order each round so no way always follows the same one
    for (let j = 0; j < ways.length; ++j) {
      const [name, f] = ways[(j + r) % ways.length];
      const t0 = now(), c0 = process.cpuUsage();
      await f();
      const cu = process.cpuUsage(c0);
      ms.get(name)!.push(now() - t0);
      cpu.get(name)!.push((cu.user + cu.system) / 1e3);
    }
  }
  fp.dispose();
  q.static.dispose();
  q.tdq.dispose();
  return { name: spec.name, params, ways: ways.map(([n]) => n), ms, cpu, checks, ops, opsOut, layers: q.static.layers.size, calib: `${o.calibSamples} DDIM trajectories x ${o.calibSteps} steps, method auto` };
}

function quantReport(rows: QuantRow[], o: { rounds: number; threads: number; ortSpin: boolean; tdqT: number }, head: string[]): string[] {
  const lines = [...head];
  lines.push(`${o.rounds} rounds; in each round every way runs one forward (batch as in the case name, output read back to JS), the order rotated by one per round. Wall ms and process CPU ms (user + system, all threads) per forward; ratios are ORT / this (above 1: this faster). ORT QDQ: our quantized model as QDQ (Q/DQ on each quantized layer's input and weight), which ORT does not fuse (see the node counts); ORT QDQ+out: the same plus a Q/DQ on each quantized layer's output (ORT's static-quantization form, which ORT fuses into QLinearConv / QGemm; an extra 8-bit quantization of the outputs that our model does not have).`);
  lines.push('');
  for (const r of rows) {
    const med = (n: string) => median(r.ms.get(n)!), lo = (n: string) => Math.min(...r.ms.get(n)!), cpu = (n: string) => median(r.cpu.get(n)!);
    lines.push(`### ${r.name} (${(r.params / 1e6).toFixed(1)}M parameters, ${r.layers} quantized layers; calibrated on ${r.calib})`);
    lines.push('');
    lines.push('| way | median ms | fastest ms | median CPU ms | ORT QDQ+out / this (median) | ORT QDQ+out / this (fastest) | ORT QDQ+out / this (CPU) | ORT QDQ / this (fastest) | ours fp32 / this (fastest) |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    const ref = 'ORT QDQ+out (static)', ref2 = 'ORT QDQ (static)';
    for (const n of r.ways)
      lines.push(`| ${n} | ${med(n).toFixed(1)} | ${lo(n).toFixed(1)} | ${cpu(n).toFixed(1)} | ${(med(ref) / med(n)).toFixed(2)} | ${(lo(ref) / lo(n)).toFixed(2)} | ${(cpu(ref) / cpu(n)).toFixed(2)} | ${(lo(ref2) / lo(n)).toFixed(2)} | ${(lo('ours fp32') / lo(n)).toFixed(2)} |`);
    lines.push('');
    lines.push(`TDQ int / static int: ${(med('ours TDQ int') / med('ours static int')).toFixed(3)} (median), ${(lo('ours TDQ int') / lo('ours static int')).toFixed(3)} (fastest), ${(cpu('ours TDQ int') / cpu('ours static int')).toFixed(3)} (CPU).`);
    lines.push('');
    lines.push('Checks (relative 2-norm error over the output):');
    lines.push('');
    for (const [k, e] of r.checks) lines.push(`- ${k}: ${e.toExponential(2)}`);
    lines.push('');
    const fmt = (ops: Record<string, number>) => Object.entries(ops).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ') || 'none counted';
    lines.push(`ORT's optimized models (graph optimization level all, saved with optimizedModelFilePath), nodes by op type: QDQ: ${fmt(r.ops)}; QDQ+out: ${fmt(r.opsOut)}.`);
    lines.push('');
  }
  return lines;
}

async function main(): Promise<void> {
  const o = benchArgs(
    'node dist/bench/ort_compare.js [options]',
    {
      cases: { type: 'string', value: 'a,b', default: CASES.map((c) => c.name).join(','), help: `cases among ${CASES.map((c) => c.name).join(', ')}` },
      rounds: { type: 'string', value: 'N', default: '9', help: 'interleaved rounds' },
      threads: { type: 'string', value: 'N', default: '2', help: 'threads on both sides' },
      out: { type: 'string', value: 'FILE.md', help: 'write the results here' },
      'no-profile': { type: 'boolean', help: 'skip the per-op profile of ours' },
      'ort-spin': { type: 'boolean', help: "let ORT's threads spin (default: off)" },
      quant: { type: 'boolean', help: 'the quantized comparison (QDQ ONNX against our integer execution)' },
      'calib-samples': { type: 'string', value: 'K', default: '2', help: '--quant: calibration trajectories' },
      'calib-steps': { type: 'string', value: 'S', default: '5', help: '--quant: DDIM steps per trajectory' },
      'tdq-t': { type: 'string', value: 'T', default: '500', help: '--quant: the timestep of the TDQ forward' },
    },
    (a) => {
      const cases = a.list('cases');
      for (const c of cases) if (!CASES.some((k) => k.name === c)) throw new BenchArgsError(`--cases: unknown case '${c}' (${CASES.map((k) => k.name).join(', ')})`);
      return {
        cases, rounds: a.int('rounds', 1), threads: a.int('threads', 1), out: a.get('out') ?? '', withProfile: !a.flag('no-profile'), ortSpin: a.flag('ort-spin'), quant: a.flag('quant'),
        calibSamples: a.int('calib-samples', 1), calibSteps: a.int('calib-steps', 1), tdqT: a.int('tdq-t', 0),
      };
    },
  );
  const { rounds, threads, out, withProfile, ortSpin, quant } = o;
  const want = o.cases;
  native().setThreads(threads);
  const ort = loadOrt();
  const rows: Row[] = [];
  const load0 = os.loadavg();
  const qrows: QuantRow[] = [];
  const qo = { rounds, threads, ortSpin, calibSamples: o.calibSamples, calibSteps: o.calibSteps, tdqT: o.tdqT };
  for (const spec of CASES.filter((c) => want.includes(c.name))) {
    if (quant) {
      const q = await runQuantCase(ort, spec, qo);
      qrows.push(q);
      for (const n of q.ways) console.log(`${q.name} ${n}: median ${median(q.ms.get(n)!).toFixed(1)} ms, fastest ${Math.min(...q.ms.get(n)!).toFixed(1)} ms, CPU ${median(q.cpu.get(n)!).toFixed(1)} ms`);
      continue;
    }
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
  if (quant) {
    const info = native().info();
    lines.push(`Date ${new Date().toISOString()}. tdq-native int8 kernel ${info.int8Kernel}.`);
    const text = quantReport(qrows, qo, lines).join('\n') + '\n';
    console.log(text);
    if (out) fs.writeFileSync(path.resolve(packageRoot, out), text);
    return;
  }
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
  if (out) fs.writeFileSync(path.resolve(packageRoot, out), text);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
