// The results table of the TDQ issue: FP, static (LSQ) and TDQ, as PTQ and as
// QAT, at W8A8, W4A8, W8A4 and W4A4, sampled with DDIM at a fixed step count,
// every number with its spread over seeds.
//
//   node dist/bench/tdq_table.js --ckpt models/fmnist-small.safetensors \
//     [--n-samples 16] [--steps 50] [--seeds 0,1,2] [--settings W8A8,W4A8,W8A4,W4A4] \
//     [--calib-samples 16] [--method auto] [--qat w4a8-tdq=runs/x/model.safetensors ...] \
//     [--eps-samples 16] [--skip-ptq] [--pert] [--no-fid] [--reuse PREVIOUS.json] \
//     [--out bench/tdq_table.json]
//
// --reuse A.json[,B.json] keeps the rows of earlier runs of the same setup
// (checked), so the PTQ rows can be computed while QAT trains and the QAT
// rows added after, or both in parallel and then joined.
//
// Sampling clips the predicted x0 to [-1, 1] at every step, as `tdq-native
// sample` does by default for pixel models.
//
// Metrics. FID-FMNIST (src/eval: the project's Fashion-MNIST classifier
// features, reference = the 60,000 training images; --no-fid skips it) of each
// model's own DDIM samples, per seed. Small sample counts bias FID upward, the
// same way for every row (same n), so rows compare; absolute values do not
// compare with published FIDs. And two proxies: for every seed, the FP model
// samples n images with DDIM; along that FP trajectory each quantized model
// predicts the noise at every step, and
//   eps-MSE  = mean over steps and pixels of (eps_Q(x_t, t) - eps_FP(x_t, t))^2
// (teacher-forced: it measures the quantization error of each step, not the
// drift; on the first --eps-samples samples of each seed, default 16). The quantized model's own DDIM samples from the same x_T are also
// compared with the FP samples:
//   x0-MSE   = mean over pixels of (x0_Q - x0_FP)^2.
// Each cell: mean ± standard deviation over seeds. PTQ rows are calibrated
// here (calibration seed 1000, disjoint from the evaluation seeds); QAT rows
// need checkpoints trained with `tdq-native train --ckpt FP --n-bit-w ...`,
// passed as --qat <setting>-<lsq|tdq>=<file>.
//
// With --ledger FILE it runs the protocol of issue 13 instead (bench/tdq_protocol.ts):
// the table as resumable cells (method x bits x DDIM steps x seed) at N
// samples, FID-FMNIST with mean and 95% interval over seeds, paired
// differences TDQ minus each baseline, and the seconds of every cell:
//
//   node dist/bench/tdq_table.js --ledger bench/results/tdq-ledger.json \
//     --table bench/results/tdq-table.md [--n 2000] [--seeds 0,1,2] [--bits W8A8,W8A5,W8A4] \
//     [--methods fp,ptq-tdq,ptq-minmax,ptq-percentile,ptq-mse,ptq-ptq4dm] [--eval-steps 25]
//
// The whole table of issue 13 (PTQ, QAT, distillation, the 100- and 10-step
// rows) is one plan (bench/tdq_plan.ts; docs/protocol.md):
//
//   node dist/bench/tdq_table.js --ledger bench/results/tdq-ledger-issue13.json --plan issue13 --dry-run
//   node dist/bench/tdq_table.js --ledger bench/results/tdq-ledger-issue13.json --plan issue13 \
//     --table bench/results/tdq-table-protocol.md --readme README.md
import fs from 'node:fs';
import path from 'node:path';

import { sample } from '../src/diffusion/samplers/index';
import { loadModel } from '../src/models/load';
import { type CalibrationReport, calibrateWithReport } from '../src/quant/calibrate';
import { type QuantConfig, resolveQuantConfig } from '../src/quant/config';
import type { QuantizedModel } from '../src/quant/quantize_model';
import { arraySource, fashionMnistSource, loadFeatureNet, runEval } from '../src/eval/run';
import { BenchArgsError, type BenchOptions, helpText, nonNegativeInt, parseBenchArgs } from './args';
import { protocolMain } from './tdq_protocol';
import { type FpModel, type Reference, epsMsePerStep, freshUNet, loadFp, mean, mse, reference, tableFromCalibration } from './tdq_common';

interface Args {
  ckpt: string;
  nSamples: number;
  steps: number;
  seeds: number[];
  settings: [number, number][];
  calibSamples: number;
  calibSteps: number;
  method: 'auto' | 'mse' | 'minmax' | 'percentile';
  qat: Map<string, string>;
  out: string;
  skipPtq: boolean;
  /** Also evaluate PTQ-TDQ with tables straight from the calibrated steps (the fit's bound). */
  pert: boolean;
  /** A previous --out file of the same setup whose rows are kept instead of recomputed. */
  reuse: string;
  fid: boolean;
  /** Samples per seed on which eps-MSE is measured (the first ones of the FP trajectory). */
  epsSamples: number;
}

/** The table mode's options (--help lists them; defaults are applied in parseTableArgs). */
export const TABLE_OPTIONS: BenchOptions = {
  ckpt: { type: 'string', value: 'FILE', help: 'the full-precision checkpoint (default: models/fmnist-small.safetensors)' },
  'n-samples': { type: 'string', value: 'N', help: 'samples per seed (default: 16)' },
  steps: { type: 'string', value: 'S', help: 'DDIM steps (default: 50)' },
  seeds: { type: 'string', value: '0,1,2', help: 'seeds (default: 0,1,2)' },
  settings: { type: 'string', value: 'W8A8,..', help: 'bit settings (default: W8A8,W4A8,W8A4,W4A4)' },
  'calib-samples': { type: 'string', value: 'K', help: 'calibration trajectories (default: 16)' },
  'calib-steps': { type: 'string', value: 'S', help: 'DDIM steps of each calibration trajectory (default: 50)' },
  method: { type: 'string', value: 'auto|mse|minmax|percentile', help: 'PTQ step method (default: auto)' },
  qat: { type: 'string', value: 'w4a8-tdq=FILE', help: 'a QAT checkpoint for a row', multiple: true },
  'eps-samples': { type: 'string', value: 'N', help: 'samples per seed for eps-MSE (default: 16)' },
  'skip-ptq': { type: 'boolean', help: 'no PTQ rows' },
  pert: { type: 'boolean', help: 'also the perturbation rows' },
  reuse: { type: 'string', value: 'A.json,..', help: 'keep the rows of earlier runs of the same setup' },
  'no-fid': { type: 'boolean', help: 'skip FID' },
  out: { type: 'string', value: 'FILE.json', help: 'output (default: bench/tdq_table.json)' },
};

export function parseTableArgs(argv: string[]): Args {
  const parsed = parseBenchArgs(TABLE_OPTIONS, argv);
  if (parsed === 'help') throw new BenchArgsError('--help is handled by main');
  const args = parsed;
  const str = (k: string) => args.get(k);
  const opt = (k: string, dflt: number) => args.readOr(k, nonNegativeInt, dflt);
  const method = str('method') ?? 'auto';
  if (!['auto', 'mse', 'minmax', 'percentile'].includes(method)) throw new BenchArgsError(`--method: auto, mse, minmax or percentile, got '${method}'`);
  const a: Args = {
    ckpt: str('ckpt') ?? 'models/fmnist-small.safetensors',
    nSamples: opt('n-samples', 16),
    steps: opt('steps', 50),
    seeds: args.readListOr('seeds', nonNegativeInt, [0, 1, 2]),
    settings: str('settings') === undefined ? [[8, 8], [4, 8], [8, 4], [4, 4]] : str('settings')!.split(',').map((s): [number, number] => {
      const m = /^W(\d)A(\d)$/i.exec(s.trim());
      if (!m) throw new BenchArgsError(`--settings: '${s}' is not of the form W4A8`);
      return [Number(m[1]), Number(m[2])];
    }),
    calibSamples: opt('calib-samples', 16),
    calibSteps: opt('calib-steps', 50),
    method: method as Args['method'],
    qat: new Map(),
    out: str('out') ?? 'bench/tdq_table.json',
    skipPtq: args.flag('skip-ptq'),
    pert: args.flag('pert'),
    reuse: str('reuse') ?? '',
    fid: !args.flag('no-fid'),
    epsSamples: opt('eps-samples', 16),
  };
  for (const spec of args.all('qat')) {
    const [key, file] = spec.split('=');
    if (!/^w\da\d-(lsq|tdq)$/i.test(key ?? '') || !file) throw new BenchArgsError(`--qat expects <w4a8-tdq|w4a8-lsq>=<file>, got '${spec}'`);
    a.qat.set(key.toLowerCase(), file);
  }
  if (a.nSamples < 1 || a.steps < 1 || !a.seeds.length) throw new BenchArgsError('--n-samples, --steps and --seeds must be positive / non-empty');
  return a;
}

const epsCount = (a: Args) => Math.min(a.nSamples, a.epsSamples);

/** FID-FMNIST of one set of samples (N, C, H, W) in [-1, 1], rounded to 8 bits as saved PNGs would be. */
type FidFn = (name: string, x0: Float32Array) => Promise<number>;

async function makeFid(a: Args, m: FpModel): Promise<FidFn | null> {
  if (!a.fid) return null;
  const net = await loadFeatureNet('fmnist');
  const reference = fashionMnistSource({ split: 'train' });
  return async (name, x0) => {
    const samples = arraySource(name, x0, [a.nSamples, m.shape[0], m.shape[1], m.shape[2]], { quantize8: true });
    const r = await runEval({ samples, reference, metrics: ['fid'], net });
    return r.metrics.fid!.value;
  };
}

async function evaluate(qm: QuantizedModel, a: Args, m: FpModel, refs: Reference[], fid: FidFn | null): Promise<Scores> {
  const epsM: number[] = [], x0M: number[] = [], fids: number[] = [];
  const shape = [a.nSamples, ...m.shape];
  for (const [si, seed] of a.seeds.entries()) {
    const r = refs[si];
    epsM.push(mean(epsMsePerStep(qm, r, m)));
    const out = await sample((x, t) => qm.forward(x, t), { sampler: 'ddim', steps: a.steps, schedule: m.schedule, shape, seed, clipDenoised: true });
    const x0 = Float32Array.from(out.dataSync() as Float32Array);
    out.dispose();
    x0M.push(mse(x0, r.x0));
    if (fid) fids.push(await fid(`seed ${seed}`, x0));
  }
  return { eps: epsM, x0: x0M, ...(fid ? { fid: fids } : {}) };
}

interface Scores {
  eps: number[];
  x0: number[];
  fid?: number[];
}

function meanStd(v: number[]): [number, number] {
  const mu = v.reduce((s, x) => s + x, 0) / v.length;
  const sd = v.length > 1 ? Math.sqrt(v.reduce((s, x) => s + (x - mu) ** 2, 0) / (v.length - 1)) : 0;
  return [mu, sd];
}

function cell(v: number[] | undefined): string {
  if (!v) return '—';
  const [mu, sd] = meanStd(v);
  return `${mu.toPrecision(3)} ± ${sd.toPrecision(2)}`;
}

async function loadQat(file: string, m: FpModel): Promise<QuantizedModel> {
  // The EMA weights when there are, the TDQ table rebuilt from them.
  const q = await loadModel(file, { config: m.config });
  if (!q.quantized) {
    q.dispose();
    throw new Error(`${file} is not a quantized checkpoint`);
  }
  return q.quantized;
}

/**
 * The rows of a previous run (--reuse FILE), when it was made with the same
 * model, sampling, seeds, calibration and metrics: a table can then be
 * completed in parts (PTQ rows while the QAT runs train, QAT rows after).
 */
function reusable(a: Args): Record<string, Scores & { seconds: number }> {
  const out: Record<string, Scores & { seconds: number }> = {};
  for (const file of a.reuse.split(',')) {
    let prev: { args: Record<string, unknown>; results: Record<string, Scores & { seconds: number }> };
    try {
      prev = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new Error(`--reuse ${file}: cannot read it as a tdq_table result (${(e as Error).message})`);
    }
    // Sampling and metrics must match for every row; calibration only for PTQ rows.
    const hasPtq = Object.keys(prev.results ?? {}).some((k) => k.startsWith('ptq-'));
    const same = ['ckpt', 'nSamples', 'steps', 'seeds', 'fid', 'epsSamples', ...(hasPtq ? (['calibSamples', 'calibSteps', 'method'] as const) : [])] as const;
    for (const k of same)
      if (JSON.stringify(prev.args?.[k]) !== JSON.stringify(a[k]))
        throw new Error(`--reuse ${file}: it was made with ${k} = ${JSON.stringify(prev.args?.[k])}, this run has ${JSON.stringify(a[k])}`);
    Object.assign(out, prev.results ?? {});
  }
  return out;
}

async function main(): Promise<void> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    console.log(helpText('node dist/bench/tdq_table.js [options]   (with --ledger: the protocol; --ledger F --help lists its options)', TABLE_OPTIONS));
    return;
  }
  const a = parseTableArgs(process.argv.slice(2));
  const m = await loadFp(a.ckpt);
  const fid = await makeFid(a, m);
  const results: Record<string, Scores & { seconds: number }> = a.reuse ? reusable(a) : {};
  // The FP references (and the FP row), made when the first row that is not reused needs them.
  let refs: Reference[] | null = null;
  const references = async (): Promise<Reference[]> => {
    if (refs) return refs;
    const t0 = Date.now();
    const fp = await freshUNet(m);
    refs = [];
    for (const seed of a.seeds) refs.push(await reference(fp, m, seed, { steps: a.steps, nSamples: a.nSamples, epsSamples: a.epsSamples }));
    fp.dispose();
    console.log(`FP references: ${a.seeds.length} seeds x ${a.nSamples} samples, DDIM ${a.steps} steps (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    if (fid && !results.fp) {
      const fpFid: number[] = [];
      for (const [si, seed] of a.seeds.entries()) fpFid.push(await fid(`fp seed ${seed}`, refs[si].x0));
      results.fp = { eps: a.seeds.map(() => 0), x0: a.seeds.map(() => 0), fid: fpFid, seconds: 0 };
      console.log(`fp: FID-FMNIST ${cell(fpFid)}`);
    }
    return refs;
  };
  const report = (key: string) => {
    const r = results[key];
    console.log(`${key}: ${r.fid ? `FID-FMNIST ${cell(r.fid)}, ` : ''}eps-MSE ${cell(r.eps)}, x0-MSE ${cell(r.x0)} (${r.seconds.toFixed(1)} s)`);
  };
  // `then` evaluates further variants of the same model (after `make`'s own key).
  const run = async (key: string, make: () => Promise<QuantizedModel>, then?: (qm: QuantizedModel) => [string, () => void][]) => {
    if (results[key]) {
      console.log(`${key}: kept from ${a.reuse}`);
      return;
    }
    let s0 = Date.now();
    const qm = await make();
    try {
      results[key] = { ...(await evaluate(qm, a, m, await references(), fid)), seconds: (Date.now() - s0) / 1000 };
      report(key);
      for (const [k, apply] of then?.(qm) ?? []) {
        s0 = Date.now();
        apply();
        results[k] = { ...(await evaluate(qm, a, m, await references(), fid)), seconds: (Date.now() - s0) / 1000 };
        report(k);
      }
    } finally {
      qm.dispose();
    }
  };
  for (const [w, act] of a.settings) {
    for (const useDynamic of [false, true]) {
      const name = `w${w}a${act}-${useDynamic ? 'tdq' : 'lsq'}`;
      let calib: CalibrationReport | null = null;
      if (!a.skipPtq)
        await run(`ptq-${name}`, async () => {
          const cfg: QuantConfig = resolveQuantConfig({ nBitW: w, nBitA: act, useDynamic });
          const { model, report: r } = await calibrateWithReport(await freshUNet(m), cfg, {
            schedule: m.schedule, steps: a.calibSteps, nSamples: a.calibSamples, seed: 1000, method: a.method, sampleShape: m.shape,
          });
          calib = r;
          if (useDynamic) {
            model.buildTable();
            model.useTable(true);
          }
          return model;
        }, (qm) => useDynamic && calib && a.pert ? [[`ptq-w${w}a${act}-pert`, () => tableFromCalibration(qm, calib!)]] : []);
      const qat = a.qat.get(name);
      if (qat) await run(`qat-${name}`, () => loadQat(qat, m));
    }
  }

  const header = `| method | ${a.settings.map(([w, x]) => `W${w}A${x}`).join(' | ')} |`;
  const rule = `|---|${a.settings.map(() => '---').join('|')}|`;
  const row = (label: string, key: (s: string) => string, metric: 'eps' | 'x0' | 'fid') =>
    `| ${label} | ${a.settings.map(([w, x]) => cell(results[key(`w${w}a${x}`)]?.[metric])).join(' | ')} |`;
  const table = (metric: 'eps' | 'x0' | 'fid') => [
    header, rule,
    `| FP | ${a.settings.map(() => (metric === 'fid' ? cell(results.fp?.fid) : '0')).join(' | ')} |`,
    row('PTQ static (LSQ init)', (s) => `ptq-${s}-lsq`, metric),
    row('PTQ TDQ', (s) => `ptq-${s}-tdq`, metric),
    ...(Object.keys(results).some((k) => k.endsWith('-pert')) ? [row('PTQ per-timestep steps (table from calibration, no MLP)', (s) => `ptq-${s}-pert`, metric)] : []),
    row('QAT static (LSQ)', (s) => `qat-${s}-lsq`, metric),
    row('QAT TDQ', (s) => `qat-${s}-tdq`, metric),
  ].join('\n');
  // TDQ minus static on the same seeds (the same noise): the spread between
  // seeds is shared by both and cancels, so this is the comparison to read.
  const diff = (x?: number[], y?: number[]) => (x && y && x.length === y.length ? x.map((v, i) => v - y[i]) : undefined);
  const paired = (metric: 'eps' | 'x0' | 'fid') => [
    header, rule,
    ...(['ptq', 'qat'] as const).map((kind) =>
      `| ${kind.toUpperCase()}: TDQ − static | ${a.settings.map(([w, x]) => cell(diff(results[`${kind}-w${w}a${x}-tdq`]?.[metric], results[`${kind}-w${w}a${x}-lsq`]?.[metric]))).join(' | ')} |`),
  ].join('\n');
  const md = [
    `Mean ± std over seeds ${a.seeds.join(', ')}; ${a.nSamples} samples per seed; DDIM ${a.steps} steps (eta 0); ${path.basename(a.ckpt)}; PTQ calibrated on ${a.calibSamples} trajectories of ${a.calibSteps} steps (${a.method}).`,
    ...(fid ? ['', `FID-FMNIST (lower is better; ${a.nSamples} samples per seed against the 60,000 training images):`, '', table('fid'),
      '', 'TDQ minus static, per seed, then mean ± std (negative: TDQ better):', '', paired('fid')] : []),
    '', `eps-MSE against the FP model along the FP trajectory (first ${epsCount(a)} samples per seed):`, '', table('eps'),
    '', 'TDQ minus static, per seed:', '', paired('eps'),
    '', 'x0-MSE of the final samples against the FP samples from the same noise:', '', table('x0'),
    '', 'TDQ minus static, per seed:', '', paired('x0'),
  ].join('\n');
  console.log(`\n${md}`);
  fs.mkdirSync(path.dirname(path.resolve(a.out)), { recursive: true });
  fs.writeFileSync(a.out, JSON.stringify({ args: { ...a, qat: Object.fromEntries(a.qat) }, results, markdown: md }, null, 2));
  console.log(`\nwrote ${a.out}`);
}

if (require.main === module)
  (process.argv.includes('--ledger') ? protocolMain(process.argv.slice(2)) : main()).catch((e) => {
    // a bad command line: its message and exit 2 (as the other bench scripts); anything else: the stack
    if (e instanceof BenchArgsError) {
      console.error(`${e.message}\n(--help lists the options)`);
      process.exit(2);
    }
    console.error(e instanceof Error ? e.stack ?? e.message : e);
    process.exit(1);
  });
