// The protocol of issue 13, behind `node dist/bench/tdq_table.js --ledger FILE`:
// the whole results table regenerated from one full-precision checkpoint,
// cell by cell, resumable.
//
// A cell is (method, bits, DDIM steps, seed) at N samples. Each finished cell
// goes into a JSON ledger (written atomically after every cell) with its
// FID-FMNIST, the seconds it took and how it ran; a rerun skips the cells the
// ledger has, so the table can be built over several sittings and extended
// (more seeds, larger N, more methods) without redoing anything. The ledger
// records the checkpoint's SHA-256 and the calibration setup and refuses to
// mix cells of another setup.
//
// Protocol (fixed; every cell the same way):
// - sampling: DDIM (eta 0, x0 clipped to [-1, 1]), in batches of --batch
//   (default 250) whose noise is seeded by seed * 100003 + batch index, so
//   every method of a seed starts from the very same noise (paired
//   comparisons); quantized models run the integer path where every
//   quantized layer has an integer kernel (--exec auto; int / fake force it);
//   a cell's sampling and FID are src/eval/protocol_cell.ts, which
//   `tdq-native eval --protocol` runs too (the same cells, bit for bit);
// - FID-FMNIST: the shipped classifier's features (src/eval) of the N
//   samples, rounded to 8 bits as saved PNGs, against the 60,000
//   Fashion-MNIST training images;
// - PTQ calibration: --calib-samples DDIM trajectories of --calib-steps steps
//   from calibration seed 1000 (disjoint from the evaluation seeds), the same
//   for every method; held-out trajectories for the TDQ smoothing from seed
//   2000;
// - the table: per cell mean and 95% interval over seeds (Student t, n - 1
//   dof; src/eval/protocol.ts), and paired differences TDQ minus each
//   baseline on the same seeds.
//
// Methods:
//   fp              the full-precision model;
//   ptq-minmax      static steps, min-max (activations and weights);
//   ptq-percentile  static steps, 99.99th percentile;
//   ptq-mse         static steps, MSE-optimal step search;
//   ptq-ptq4dm      static MSE steps calibrated on PTQ4DM's timestep mix
//                   (src/quant/ptq_select.ts: ndtcCounts; 1,024 draws of
//                   t ~ N(0.4 T, 0.4 T) clamped, as the authors' script;
//                   their BRECQ/AdaRound reconstruction is not reproduced);
//   ptq-tdq         TDQ: per-timestep steps ('auto': min-max at 8-bit
//                   activations, percentile below), smoothed over t with the
//                   bandwidth chosen on held-out trajectories
//                   (selectSmoothing), the MLPs fitted to them;
//   ptq-tdq-raw     TDQ fitted to the raw per-timestep steps (no smoothing);
//   qat-lsq, qat-tdq, qat-pact
//                   QAT trained here from the FP checkpoint (the train
//                   command's recipe: steps from activation statistics, TDQ
//                   MLPs starting at the static step, weights and MLPs at
//                   2e-4, steps at 2e-5; --qat-steps steps of batch
//                   --qat-batch, --qat-warmup warm-up steps), in a run folder
//                   under --qat-dir per (method, bits). A cell whose run was
//                   interrupted resumes it (exactly, from its last
//                   checkpoint); a finished run is reused. Its training
//                   seconds (all sittings) go into the first cell;
//   qat-lsq-kd, qat-tdq-kd, qat-pact-kd
//                   the same with distillation: the loss is the MSE between
//                   the quantized and the FP model's noise predictions
//                   (weight --qat-distill-weight, the rest the diffusion loss);
//   qat-<name>      a QAT checkpoint given as --qat-file <name>=<file>.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import type { EpsModel } from '../src/diffusion/samplers/index';
import { loadModel } from '../src/models/load';
import { type MeanCI, meanCI, pairedDifferences } from '../src/eval/protocol';
import { protocolFid, protocolReference, sampleProtocolSeed } from '../src/eval/protocol_cell';
import { loadFeatureNet } from '../src/eval/run';
import { TDQ_INITS, type TdqInit, calibrateWithReport, fitTdqModules } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import { ndtcCounts, selectSmoothing, smoothTarget } from '../src/quant/ptq_select';
import { type ExecRequest, type QuantizedModel, applyExec } from '../src/quant/quantize_model';
import { type StepMethod, type TdqTarget, type TimestepStats, mulberry32, searchStep } from '../src/quant/step_search';
import type { TdqModule } from '../src/quant/tdq';
import type { Config } from '../src/config';
import { QAT_DEFAULTS } from '../src/cli/commands/train';
import { qatPrepare } from '../src/quant/qat';
import type { Denoiser } from '../src/models/diffusion';
import { latestCheckpoint, train } from '../src/train/trainer';
import { BenchArgsError, type BenchOptions, finiteNumber, helpText, nonNegativeInt, parseBenchArgs } from './args';
import { type FpModel, freshUNet, loadFp } from './tdq_common';
import { PLAN_NAMES, type PlanJob, type PlanName, crossJobs, estimateRates, filterPlan, listPlan, planJobs } from './tdq_plan';

export const PTQ_METHODS = ['ptq-tdq', 'ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm', 'ptq-tdq-raw'] as const;
export const QAT_METHODS = ['qat-tdq', 'qat-lsq', 'qat-pact', 'qat-tdq-kd', 'qat-lsq-kd', 'qat-pact-kd'] as const;
const ORDER = ['fp', 'ptq-tdq', 'ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm', 'ptq-tdq-raw', ...QAT_METHODS];
/** Each TDQ method and the baselines it is paired with. */
const PAIRS: [string, string[]][] = [
  ['ptq-tdq', ['ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm', 'ptq-tdq-raw']],
  ['qat-tdq', ['qat-lsq', 'qat-pact']],
  ['qat-tdq-kd', ['qat-lsq-kd', 'qat-pact-kd', 'qat-tdq']],
];

/** How the QAT cells train (one setup per ledger). */
export interface QatSetup {
  steps: number;
  batch: number;
  warmup: number;
  lr: number;
  distillWeight: number;
  calibMethod: StepMethod;
  tdqInit: TdqInit;
}

interface ProtocolArgs {
  ledger: string;
  ckpt: string;
  methods: string[];
  bits: string[];
  steps: number[];
  seeds: number[];
  n: number;
  batch: number;
  calibSamples: number;
  calibSteps: number;
  exec: ExecRequest;
  qat: Map<string, string>;
  table: string;
  tableOnly: boolean;
  maxCells: number;
  /** Other ledgers (of the same setup) whose cells are copied into this one: workers that ran in parallel. */
  merge: string[];
  /** The QAT cells' training, and the parent folder of their runs. */
  qatSetup: QatSetup;
  qatDir: string;
  /** A named plan of cells (bench/tdq_plan.ts) instead of methods x bits x steps; --methods, --bits and --eval-steps then filter it. */
  plan: PlanName | '';
  /** The methods, bits and step counts given on the command line (the plan's filters). */
  given: { methods?: string[]; bits?: string[]; steps?: number[] };
  /** List the cells with time estimates; run nothing. */
  dryRun: boolean;
  /** Ledgers whose recorded seconds give the estimates (besides this one). */
  estimateFrom: string[];
  /** A README-like file whose marked section gets the headline table (ours beside the paper). */
  readme: string;
}

export interface Cell {
  method: string;
  bits: string;
  steps: number;
  seed: number;
  n: number;
  fid: number;
  /** Seconds of sampling and FID; calibration seconds apart (paid once per method and bits). */
  seconds: number;
  calibSeconds?: number;
  exec: string;
  note?: string;
  /** ptq-tdq: the chosen bandwidth (timesteps) and the held-out errors. */
  smoothing?: { h: number; errors: { h: number; error: number }[] };
  /** QAT cells trained here: the run folder, the training seconds over all sittings (first cell of a unit only), the last loss. */
  qat?: { run: string; trainSeconds?: number; lastLoss: number; steps: number };
  finished: string;
}

export interface Ledger {
  setup: { ckpt: string; sha256: string; calibSamples: number; calibSteps: number; calibSeed: number; heldOutSeed: number; batch: number; reference: string; qat?: QatSetup };
  cells: Record<string, Cell>;
}

export const cellKey = (c: { method: string; bits: string; steps: number; seed: number; n: number }): string => `${c.method}|${c.bits}|ddim${c.steps}|seed${c.seed}|n${c.n}`;

const USAGE = 'protocol mode: --ledger FILE [--plan issue13] [--dry-run] [--readme README.md] [--estimate-from A.json,..] [--ckpt F] [--methods a,b] [--bits W8A8,..] [--eval-steps 25,100] [--seeds 0,1,2] [--n 2000] [--batch 250] [--exec auto|int|fake] [--qat-file name=file] [--qat-steps 1000] [--qat-batch 32] [--qat-warmup 50] [--qat-lr 2e-4] [--qat-distill-weight 1] [--qat-tdq-init constant|bias|fit] [--qat-calib-method stats|auto|...] [--qat-dir DIR] [--table OUT.md] [--table-only] [--max-cells K] [--merge OTHER.json,...]';

/** The protocol mode's options (--help lists them; defaults are applied in parseProtocolArgs). */
export const PROTOCOL_OPTIONS: BenchOptions = {
  ledger: { type: 'string', value: 'FILE.json', help: 'the ledger: finished cells, kept and extended (required)' },
  ckpt: { type: 'string', value: 'FILE', help: 'the full-precision checkpoint (default: models/fmnist-small.safetensors)' },
  methods: { type: 'string', value: 'a,b', help: 'fp, ptq-* and qat-* methods (default: fp and the PTQ methods)' },
  bits: { type: 'string', value: 'W8A8,..', help: 'bit settings (default: W8A8,W8A5,W8A4)' },
  'eval-steps': { type: 'string', value: '25,100', help: 'DDIM steps of the evaluation (default: 25)' },
  seeds: { type: 'string', value: '0,1,2', help: 'evaluation seeds (default: 0,1,2)' },
  n: { type: 'string', value: 'N', help: 'samples per cell (default: 2000)' },
  batch: { type: 'string', value: 'B', help: 'sampling batch (default: 250)' },
  'calib-samples': { type: 'string', value: 'K', help: 'PTQ calibration trajectories (default: 16)' },
  'calib-steps': { type: 'string', value: 'S', help: 'DDIM steps of each calibration trajectory (default: 50)' },
  exec: { type: 'string', value: 'auto|int|fake', help: 'execution of quantized models (default: auto)' },
  'qat-file': { type: 'string', value: 'name=file', help: 'a QAT checkpoint made elsewhere, as method qat-<name>', multiple: true },
  'qat-steps': { type: 'string', value: 'N', help: 'QAT cells: training steps (default: 1000)' },
  'qat-batch': { type: 'string', value: 'B', help: 'QAT cells: batch (default: 32)' },
  'qat-warmup': { type: 'string', value: 'N', help: 'QAT cells: warm-up steps (default: 50)' },
  'qat-lr': { type: 'string', value: 'LR', help: 'QAT cells: weight learning rate (default: the train command\'s)' },
  'qat-distill-weight': { type: 'string', value: 'W', help: 'the -kd cells\' distillation weight in [0, 1] (default: 1)' },
  'qat-tdq-init': { type: 'string', value: 'constant|bias|fit', help: 'QAT cells: how the TDQ MLPs start (default: constant)' },
  'qat-calib-method': { type: 'string', value: 'stats|auto|..', help: 'QAT cells: initial step sizes (default: stats)' },
  'qat-dir': { type: 'string', value: 'DIR', help: 'QAT cells\' training runs (default: beside the ledger)' },
  table: { type: 'string', value: 'OUT.md', help: 'write the table here' },
  'table-only': { type: 'boolean', help: 'only write the table from the ledger' },
  'max-cells': { type: 'string', value: 'K', help: 'stop after K new cells' },
  merge: { type: 'string', value: 'OTHER.json,..', help: 'merge the cells of other ledgers of the same setup' },
  plan: { type: 'string', value: 'issue13', help: 'run a named plan of cells (issue13: the whole table, PTQ, QAT, 100- and 10-step rows); --methods, --bits and --eval-steps filter it' },
  'dry-run': { type: 'boolean', help: 'list every cell (done / to do) with estimated seconds from the ledgers\' recorded times; run nothing' },
  'estimate-from': { type: 'string', value: 'A.json,..', help: 'ledgers whose seconds give the --dry-run estimates (default: this ledger, --merge ones and bench/results/tdq-ledger*.json)' },
  readme: { type: 'string', value: 'README.md', help: 'write the headline table (ours beside the paper) between the file\'s <!-- tdq-protocol-table:begin/end --> markers' },
};

export function parseProtocolArgs(argv: string[]): ProtocolArgs {
  let parsed: ReturnType<typeof parseBenchArgs>;
  try {
    parsed = parseBenchArgs(PROTOCOL_OPTIONS, argv);
  } catch (e) {
    throw new BenchArgsError((e as Error).message);
  }
  if (parsed === 'help') throw new BenchArgsError(`--help is handled by protocolMain (${USAGE})`);
  const args = parsed;
  const str = (k: string) => args.get(k);
  const opt = <T>(k: string, f: (k: string, s: string) => T, dflt: T): T => args.readOr(k, f, dflt);
  const list = <T>(k: string, f: (k: string, s: string) => T, dflt: T[]): T[] => args.readListOr(k, f, dflt);
  const qat = new Map<string, string>();
  for (const spec of args.all('qat-file')) {
    const [name, file] = spec.split('=');
    if (!name || !file) throw new BenchArgsError(`--qat-file expects <name>=<file>, got '${spec}'`);
    if ((QAT_METHODS as readonly string[]).includes(`qat-${name}`)) throw new BenchArgsError(`--qat-file ${name}: qat-${name} is a method trained here; pick another name`);
    qat.set(`qat-${name}`, file);
  }
  const a: ProtocolArgs = {
    ledger: str('ledger') ?? '',
    ckpt: str('ckpt') ?? 'models/fmnist-small.safetensors',
    methods: list('methods', (_k, s) => s, ['fp', 'ptq-tdq', 'ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm']),
    bits: list('bits', (_k, s) => s.toUpperCase(), ['W8A8', 'W8A5', 'W8A4']),
    steps: list('eval-steps', nonNegativeInt, [25]),
    seeds: list('seeds', nonNegativeInt, [0, 1, 2]),
    n: opt('n', nonNegativeInt, 2000),
    batch: opt('batch', nonNegativeInt, 250),
    calibSamples: opt('calib-samples', nonNegativeInt, 16),
    calibSteps: opt('calib-steps', nonNegativeInt, 50),
    exec: (str('exec') ?? 'auto') as ExecRequest,
    qat,
    table: str('table') ?? '',
    tableOnly: args.flag('table-only'),
    maxCells: opt('max-cells', nonNegativeInt, Infinity),
    merge: list('merge', (_k, s) => s, []),
    qatSetup: {
      steps: opt('qat-steps', nonNegativeInt, 1000),
      batch: opt('qat-batch', nonNegativeInt, 32),
      warmup: opt('qat-warmup', nonNegativeInt, 50),
      lr: opt('qat-lr', finiteNumber, QAT_DEFAULTS.lr),
      distillWeight: opt('qat-distill-weight', finiteNumber, 1),
      calibMethod: (str('qat-calib-method') ?? 'stats') as StepMethod,
      tdqInit: (str('qat-tdq-init') ?? 'constant') as TdqInit,
    },
    qatDir: str('qat-dir') ?? '',
    plan: (str('plan') ?? '') as PlanName | '',
    given: {
      ...(str('methods') !== undefined ? { methods: list('methods', (_k, s) => s, []) } : {}),
      ...(str('bits') !== undefined ? { bits: list('bits', (_k, s) => s.toUpperCase(), []) } : {}),
      ...(str('eval-steps') !== undefined ? { steps: list('eval-steps', nonNegativeInt, []) } : {}),
    },
    dryRun: args.flag('dry-run'),
    estimateFrom: list('estimate-from', (_k, s) => s, []),
    readme: str('readme') ?? '',
  };
  if (a.plan && !(PLAN_NAMES as readonly string[]).includes(a.plan)) throw new BenchArgsError(`--plan: one of ${PLAN_NAMES.join(', ')}, got '${a.plan}'`);
  if (a.plan && a.qat.size) throw new BenchArgsError('--qat-file adds methods to the plain mode (methods x bits); it does not combine with --plan');
  if (!a.ledger) throw new BenchArgsError(`--ledger FILE is required (${USAGE})`);
  if (!a.qatDir) a.qatDir = path.join(path.dirname(a.ledger), `${path.basename(a.ledger, '.json')}-qat`);
  for (const m of a.plan ? a.given.methods ?? [] : a.methods)
    if (m !== 'fp' && !(PTQ_METHODS as readonly string[]).includes(m) && !(QAT_METHODS as readonly string[]).includes(m) && !a.qat.has(m))
      throw new BenchArgsError(`unknown method '${m}' (fp, ${PTQ_METHODS.join(', ')}, ${QAT_METHODS.join(', ')}, or qat-<name> with --qat-file <name>=<file>)`);
  for (const b of a.bits) if (!/^W\dA\d$/.test(b)) throw new BenchArgsError(`--bits: '${b}' is not of the form W8A4`);
  if (!['auto', 'int', 'fake'].includes(a.exec)) throw new BenchArgsError(`--exec: auto, int or fake, got '${a.exec}'`);
  if (a.n < 2 || a.batch < 1 || !a.seeds.length || !a.steps.length || a.steps.some((x) => x < 1)) throw new BenchArgsError('--n (>= 2), --batch, --seeds and --eval-steps must be positive / non-empty');
  const q = a.qatSetup;
  if (q.steps < 1 || q.batch < 1) throw new BenchArgsError('--qat-steps and --qat-batch must be positive');
  if (!(q.lr > 0)) throw new BenchArgsError(`--qat-lr must be positive, got ${q.lr}`);
  if (!(q.distillWeight >= 0 && q.distillWeight <= 1)) throw new BenchArgsError(`--qat-distill-weight must be in [0, 1], got ${q.distillWeight}`);
  if (!['stats', 'auto', 'mse', 'minmax', 'percentile'].includes(q.calibMethod)) throw new BenchArgsError(`--qat-calib-method: stats, auto, mse, minmax or percentile, got '${q.calibMethod}'`);
  if (!(TDQ_INITS as readonly string[]).includes(q.tdqInit)) throw new BenchArgsError(`--qat-tdq-init: one of ${TDQ_INITS.join(', ')}, got '${q.tdqInit}'`);
  return a;
}

/** The jobs a run covers: the plan filtered by what was given, or methods x bits x steps. */
export function jobsOf(a: Pick<ProtocolArgs, 'plan' | 'given' | 'methods' | 'bits' | 'steps'>): PlanJob[] {
  return a.plan ? filterPlan(planJobs(a.plan), a.given) : crossJobs(a.methods, a.bits, a.steps);
}

/** The --dry-run listing: every cell of the run's jobs, done or to do, with estimated seconds. */
export function dryRunText(a: ProtocolArgs, ledger: Ledger | null): string {
  const jobs = jobsOf(a);
  const here = path.join(__dirname, '..', '..', 'bench', 'results');
  const dflt = fs.existsSync(here) ? fs.readdirSync(here).filter((f) => /^tdq-ledger.*\.json$/.test(f)).map((f) => path.join(here, f)) : [];
  const files = [...new Set([...(a.estimateFrom.length ? a.estimateFrom : dflt), ...a.merge].map((f) => path.resolve(f)))].filter((f) => path.resolve(a.ledger) !== f);
  const sources = [...(ledger ? [ledger] : []), ...files.map((f) => readLedger(f)).filter((l): l is Ledger => l !== null)];
  const cells = { ...Object.fromEntries(a.merge.flatMap((f) => Object.entries(readLedger(f)?.cells ?? {}))), ...(ledger?.cells ?? {}) };
  const l = listPlan(jobs, {
    seeds: a.seeds, n: a.n, exec: a.exec, qatSteps: a.qatSetup.steps, qatBatch: a.qatSetup.batch, has: (k) => k in cells, key: cellKey,
    trained: (m, b) => fs.existsSync(path.join(a.qatDir, `${m}-${b.toLowerCase()}`, 'model.safetensors')),
  }, estimateRates(sources));
  return `${a.plan ? `plan ${a.plan}` : 'methods x bits x steps'}: ${jobs.length} jobs; ledger ${a.ledger}${ledger ? '' : ' (new)'}; estimates from ${sources.length} ledger(s)${files.length ? `: ${files.map((f) => path.relative(process.cwd(), f)).join(', ')}` : ''}\n${l.text}`;
}

export function readLedger(file: string): Ledger | null {
  if (!fs.existsSync(file)) return null;
  try {
    const l = JSON.parse(fs.readFileSync(file, 'utf8')) as Ledger;
    if (!l.setup || typeof l.cells !== 'object') throw new Error('no setup or cells');
    return l;
  } catch (e) {
    throw new Error(`--ledger ${file}: not a readable ledger (${(e as Error).message})`);
  }
}

export function writeLedger(file: string, l: Ledger): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(l, null, 1));
  fs.renameSync(tmp, file);
}

/** Throws unless a ledger's cells were made with this run's setup (the same checkpoint bytes, calibration and batching). */
export function checkSetup(have: Ledger['setup'], want: Ledger['setup'], file: string): void {
  for (const k of ['sha256', 'calibSamples', 'calibSteps', 'calibSeed', 'heldOutSeed', 'batch'] as const)
    if (have[k] !== want[k]) throw new Error(`ledger ${file}: its cells were made with ${k} = ${have[k]}, this run has ${want[k]} (use another ledger)`);
  // QAT training: checked when both have QAT cells' setup (a run without QAT methods leaves it out).
  if (have.qat && want.qat)
    for (const k of Object.keys(want.qat) as (keyof QatSetup)[])
      if (have.qat[k] !== want.qat[k]) throw new Error(`ledger ${file}: its QAT cells were trained with ${k} = ${have.qat[k]}, this run has ${want.qat[k]} (use another ledger)`);
}

/** The train config of a QAT cell: the FP model's own, with the QAT setup's length, batch, rates and no previews. */
export function qatTrainConfig(fpConfig: Config, q: QatSetup): Config {
  const c = structuredClone(fpConfig);
  c.model.base_learning_rate = q.lr;
  c.training = { ...c.training, max_steps: q.steps, batch_size: q.batch, warmup_steps: q.warmup, lr_schedule: 'constant', scale_lr: false, sample_every: 0, checkpoint_every: Math.min(100, q.steps), log_every: Math.min(50, q.steps) };
  return c;
}

/** The quantization of a QAT method at some bits. */
function qatQuantConfig(method: string, bits: string) {
  const [, w, x] = /^W(\d)A(\d)$/.exec(bits)!.map(Number);
  const kind = method.replace(/^qat-/, '').replace(/-kd$/, '');
  return resolveQuantConfig({ nBitW: w, nBitA: x, useDynamic: kind === 'tdq', staticMethod: kind === 'pact' ? 'pact' : 'lsq' });
}

export interface QatUnitResult {
  /** The exported model, or null when training stopped before the end (rerun to continue). */
  model: string | null;
  run: string;
  trainSeconds: number;
  lastLoss: number;
  resumedFrom: number | null;
}

/**
 * Trains (or resumes, or reuses) the QAT run of one (method, bits): its
 * folder is <qatDir>/<method>-<bits>. A folder with model.safetensors is
 * finished; one with a checkpoint resumes from it exactly; anything else
 * starts over. Seconds over all sittings are kept in <run>/seconds.json.
 */
export async function trainQatUnit(
  method: string, bits: string, fp: FpModel, a: Pick<ProtocolArgs, 'qatSetup' | 'qatDir' | 'calibSamples' | 'calibSteps'>,
  o: { signal?: AbortSignal; stopAtStep?: number; print?: ((s: string) => void) | null } = {},
): Promise<QatUnitResult> {
  const run = path.join(a.qatDir, `${method}-${bits.toLowerCase()}`);
  const secondsFile = path.join(run, 'seconds.json');
  const readSeconds = () => (fs.existsSync(secondsFile) ? (JSON.parse(fs.readFileSync(secondsFile, 'utf8')) as { seconds: number; lastLoss: number }) : { seconds: 0, lastLoss: NaN });
  const exported = path.join(run, 'model.safetensors');
  if (fs.existsSync(exported)) {
    const s = readSeconds();
    return { model: exported, run, trainSeconds: s.seconds, lastLoss: s.lastLoss, resumedFrom: null };
  }
  const config = qatTrainConfig(fp.config, a.qatSetup);
  const resumeFrom = fs.existsSync(run) ? latestCheckpoint(run) : null;
  if (!resumeFrom && fs.existsSync(run)) fs.rmSync(run, { recursive: true, force: true }); // died before its first checkpoint
  const cfg = qatQuantConfig(method, bits);
  const distill = method.endsWith('-kd');
  const prepare = async (unet: Denoiser) => {
    const p = await qatPrepare(cfg, {
      schedule: fp.schedule, sampleShape: fp.shape, nSamples: a.calibSamples, steps: a.calibSteps, seed: 1000,
      method: a.qatSetup.calibMethod, tdqInit: a.qatSetup.tdqInit, calibrate: !resumeFrom,
      quantLr: (lr) => QAT_DEFAULTS.quantLrFactor * lr, tdqLr: (lr) => QAT_DEFAULTS.tdqLrFactor * lr,
    })(unet);
    if (!distill) return p;
    const teacher = await freshUNet(fp); // the ledger's FP checkpoint (its SHA-256 is checked)
    teacher.eval();
    return { ...p, metadata: { ...p.metadata, distill_weight: String(a.qatSetup.distillWeight) }, distill: { teacher, weight: a.qatSetup.distillWeight } };
  };
  const before = readSeconds().seconds;
  const t0 = Date.now();
  const save = (lastLoss: number) => {
    fs.mkdirSync(run, { recursive: true });
    const tmp = `${secondsFile}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify({ seconds: before + (Date.now() - t0) / 1000, lastLoss }));
    fs.renameSync(tmp, secondsFile);
  };
  const r = await train({
    config, outDir: run, ...(resumeFrom ? { resume: run } : { initCheckpoint: fp.file }), prepare: prepare as never,
    signal: o.signal, stopAtStep: o.stopAtStep, print: o.print === undefined ? null : o.print,
    onStep: (step, loss) => {
      if (step % 10 === 0) save(loss);
    },
  });
  save(r.lastLoss);
  const resumedStep = resumeFrom ? Number(/step-(\d+)/.exec(path.basename(resumeFrom))![1]) : null;
  return { model: r.exported, run, trainSeconds: readSeconds().seconds, lastLoss: r.lastLoss, resumedFrom: resumedStep };
}

const log = (s: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${s}`);

/** One calibrated quantized model per (method, bits), made when a cell needs it. */
async function makeQuantized(method: string, bits: string, a: ProtocolArgs, fp: FpModel): Promise<{ qm: QuantizedModel; smoothing?: Cell['smoothing'] }> {
  const [, w, x] = /^W(\d)A(\d)$/.exec(bits)!.map(Number);
  const calib = { schedule: fp.schedule, steps: a.calibSteps, nSamples: a.calibSamples, sampleShape: fp.shape };
  if (method === 'ptq-tdq' || method === 'ptq-tdq-raw') {
    const cfg = resolveQuantConfig({ nBitW: w, nBitA: x, useDynamic: true });
    const { model: qm, report } = await calibrateWithReport(await freshUNet(fp), cfg, { ...calib, seed: 1000, method: 'auto' });
    let smoothing: Cell['smoothing'];
    if (method === 'ptq-tdq') {
      // Held-out trajectories: their per-timestep steps only (no fit needed).
      const held = await calibrateWithReport(await freshUNet(fp), cfg, { ...calib, seed: 2000, method: 'auto', fitIters: 1 });
      held.model.dispose();
      const tdq = qm.actQuantizers().filter((q) => q.kind === 'tdq');
      const byName = (r: typeof report) => new Map(r.quantizers.map((q) => [q.name, q]));
      const fitMap = byName(report), heldMap = byName(held.report);
      const targets: TdqTarget[] = tdq.map((q) => ({ t: fitMap.get(q.name)!.t, step: fitMap.get(q.name)!.steps }));
      const heldTargets: TdqTarget[] = tdq.map((q) => ({ t: heldMap.get(q.name)!.t, step: heldMap.get(q.name)!.steps }));
      const choice = selectSmoothing(targets, heldTargets);
      smoothing = choice;
      log(`${method} ${bits}: smoothing bandwidth ${choice.h} timesteps (held-out MSE of log step: ${choice.errors.map((e) => `${e.h}: ${e.error.toExponential(3)}`).join(', ')})`);
      if (choice.h !== 0) fitTdqModules(tdq.map((q) => q.tdq as TdqModule), targets.map((t) => smoothTarget(t, choice.h)), { timesteps: qm.timesteps });
    }
    qm.buildTable();
    qm.useTable(true);
    return { qm, smoothing };
  }
  const cfg = resolveQuantConfig({ nBitW: w, nBitA: x, useDynamic: false });
  const stepMethod = method === 'ptq-minmax' ? 'minmax' : method === 'ptq-percentile' ? 'percentile' : 'mse';
  const { model: qm, report } = await calibrateWithReport(await freshUNet(fp), cfg, { ...calib, seed: 1000, method: stepMethod, keepStats: method === 'ptq-ptq4dm' });
  if (method === 'ptq-ptq4dm') applyNdtc(qm, report.stats!);
  return { qm };
}

/**
 * PTQ4DM's calibration on our statistics: 1,024 draws of the timestep
 * (ndtcCounts, over the calibration timesteps), each worth the same number of activation values taken
 * from that step's subsample; the static step is the MSE-optimal one of that
 * mix (their activation init, --init_amode mse).
 */
function applyNdtc(qm: QuantizedModel, stats: Map<string, TimestepStats[]>, draws = 1024, perDraw = 16): void {
  qm.actQuantizers().forEach((q, qi) => {
    const list = [...stats.get(q.name)!].sort((x, y) => x.t - y.t); // ascending t, as ndtcCounts indexes
    const counts = ndtcCounts(draws, list.length, mulberry32(4242));
    const rand = mulberry32(977 + qi);
    const pool: number[] = [];
    let lo = Infinity, hi = -Infinity;
    counts.forEach((c, i) => {
      if (!c) return;
      const s = list[i];
      lo = Math.min(lo, s.min);
      hi = Math.max(hi, s.max);
      for (let k = 0; k < c * perDraw; ++k) pool.push(s.sample[Math.floor(rand() * s.sample.length)]);
    });
    q.setStaticStep(searchStep(Float32Array.from(pool), lo, hi, q.bits, q.range, { method: 'mse' }));
  });
}

/** FID of N samples (N, C, H, W) in [-1, 1]. */
export type FidFn = (name: string, x0: Float32Array) => Promise<number>;

export interface ProtocolHooks {
  /** Replaces FID-FMNIST (tests: a model without the classifier's image size). */
  fid?: FidFn;
  /** QAT training stops after this step (tests: an interrupted cell). */
  stopTrainingAt?: number;
  /** Stops QAT training cleanly (a checkpoint is written); default: SIGINT / SIGTERM. */
  signal?: AbortSignal;
}

export async function protocolMain(argv: string[], hooks: ProtocolHooks = {}): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(helpText('node dist/bench/tdq_table.js --ledger FILE [options]', PROTOCOL_OPTIONS));
    return;
  }
  const a = parseProtocolArgs(argv);
  if (a.dryRun) {
    console.log(dryRunText(a, readLedger(a.ledger)));
    return;
  }
  const jobs = jobsOf(a);
  const sha256 = crypto.createHash('sha256').update(fs.readFileSync(a.ckpt)).digest('hex');
  const wantsQat = jobs.some((j) => (QAT_METHODS as readonly string[]).includes(j.method));
  const setup: Ledger['setup'] = {
    ckpt: a.ckpt, sha256, calibSamples: a.calibSamples, calibSteps: a.calibSteps, calibSeed: 1000, heldOutSeed: 2000, batch: a.batch, reference: 'fashion-mnist train (60,000)',
    ...(wantsQat ? { qat: a.qatSetup } : {}),
  };
  const ledger: Ledger = readLedger(a.ledger) ?? { setup, cells: {} };
  checkSetup(ledger.setup, setup, a.ledger);
  if (wantsQat && !ledger.setup.qat) ledger.setup.qat = a.qatSetup;
  for (const file of a.merge) {
    const other = readLedger(file);
    if (!other) throw new Error(`--merge ${file}: no such ledger`);
    checkSetup(other.setup, setup, file);
    checkSetup(other.setup, ledger.setup, file); // its QAT cells against this ledger's
    // a worker that trained the QAT cells brings their setup (the table reports it)
    if (other.setup.qat && !ledger.setup.qat) ledger.setup.qat = other.setup.qat;
    for (const [k, c] of Object.entries(other.cells)) ledger.cells[k] ??= c;
  }
  if (a.merge.length) writeLedger(a.ledger, ledger);
  if (!a.tableOnly) {
    const fp = await loadFp(a.ckpt);
    let fid: FidFn;
    if (hooks.fid) fid = hooks.fid;
    else {
      const net = await loadFeatureNet('fmnist');
      const reference = protocolReference();
      fid = (name: string, x0: Float32Array) => protocolFid(x0, { name, shape: fp.shape, net, reference });
    }
    // Ctrl-C / SIGTERM during QAT training: the run writes a checkpoint and the next sitting resumes it.
    const abort = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => {
      log(`${sig}: stopping after this training step (checkpoint written; rerun to continue)`);
      abort.abort();
    };
    if (!hooks.signal) for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, onSignal);
    const signal = hooks.signal ?? abort.signal;
    try {
      let ran = 0;
      // The plan's order; without a plan bits outer, methods inner: each setting's row is complete before the next starts.
      outer: for (const { method, bits, steps: jobSteps } of jobs) {
        {
          const todo = jobSteps.flatMap((steps) => a.seeds.map((seed) => ({ method, bits, steps, seed, n: a.n }))).filter((c) => !ledger.cells[cellKey(c)]);
          if (!todo.length) continue;
          if (ran >= a.maxCells) break outer;
          let c0 = Date.now();
          let forward: EpsModel;
          let dispose: () => void;
          let exec = 'fp32', note: string | undefined, smoothing: Cell['smoothing'], qatInfo: Cell['qat'], trainSeconds: number | undefined;
          if (method === 'fp') {
            const unet = await freshUNet(fp);
            forward = (x, t) => unet.forward(x, t);
            dispose = () => unet.dispose();
          } else {
            let qm: QuantizedModel;
            if (method.startsWith('qat-')) {
              let file = a.qat.get(method);
              if ((QAT_METHODS as readonly string[]).includes(method)) {
                const r = await trainQatUnit(method, bits, fp, a, { signal, stopAtStep: hooks.stopTrainingAt, print: (l) => log(`${method} ${bits}: ${l.replace(/^tdq-native: /, '')}`) });
                if (r.resumedFrom !== null) log(`${method} ${bits}: resumed its QAT run ${r.run} from step ${r.resumedFrom}`);
                if (!r.model) {
                  log(`${method} ${bits}: QAT training stopped (${r.run}); rerun the same command to continue it`);
                  break outer;
                }
                file = r.model;
                // The training seconds go into one cell only: not again when a later job (other step counts) reuses the run.
                const counted = Object.values(ledger.cells).some((c) => c.qat?.run === r.run && c.qat.trainSeconds !== undefined);
                trainSeconds = counted ? undefined : r.trainSeconds;
                c0 = Date.now(); // the cell's own 'ready' time is loading the trained model
                qatInfo = { run: r.run, lastLoss: r.lastLoss, steps: a.qatSetup.steps };
              }
              const q = await loadModel(file!, { config: fp.config });
              if (!q.quantized) throw new Error(`${file}: not a quantized checkpoint`);
              qm = q.quantized;
            } else ({ qm, smoothing } = await makeQuantized(method, bits, a, fp));
            qm.eval();
            const r = applyExec(qm, a.exec);
            exec = r.exec;
            note = r.note ?? undefined;
            forward = (x, t) => qm.forward(x, t);
            dispose = () => qm.dispose();
          }
          let calibSeconds: number | undefined = (Date.now() - c0) / 1000;
          log(`${method} ${bits}: ready in ${calibSeconds.toFixed(0)} s (${exec}${note ? `; ${note}` : ''})`);
          try {
            for (const c of todo) {
              if (ran >= a.maxCells) break;
              const s0 = Date.now();
              const x0 = await sampleProtocolSeed(forward, { n: a.n, batch: a.batch, steps: c.steps, seed: c.seed, schedule: fp.schedule, shape: fp.shape });
              const value = await fid(`${method} ${bits} seed ${c.seed}`, x0);
              const cell: Cell = {
                ...c, fid: value, seconds: (Date.now() - s0) / 1000, ...(calibSeconds !== undefined ? { calibSeconds } : {}), exec, ...(note ? { note } : {}), ...(smoothing ? { smoothing } : {}),
                ...(qatInfo ? { qat: { ...qatInfo, ...(trainSeconds !== undefined ? { trainSeconds } : {}) } } : {}), finished: new Date().toISOString(),
              };
              calibSeconds = undefined;
              trainSeconds = undefined;
              ledger.cells[cellKey(c)] = cell;
              writeLedger(a.ledger, ledger);
              if (a.table) fs.writeFileSync(a.table, tableMarkdown(ledger));
              if (a.readme) writeReadmeSection(a.readme, ledger, a.table);
              ran++;
              log(`${cellKey(c)}: FID-FMNIST ${value.toFixed(3)} (${cell.seconds.toFixed(0)} s)`);
            }
          } finally {
            dispose();
          }
        }
      }
    } finally {
      if (!hooks.signal) for (const sig of ['SIGINT', 'SIGTERM'] as const) process.off(sig, onSignal);
    }
  }
  if (a.table) {
    fs.writeFileSync(a.table, tableMarkdown(ledger));
    log(`wrote ${a.table}`);
  }
  if (a.readme) {
    writeReadmeSection(a.readme, ledger, a.table);
    log(`wrote the headline table into ${a.readme}`);
  }
}

// ---------------------------------------------------------------------------
// The table

const PAPER: Record<string, string> = {
  W8A5: 'paper, PTQ W8A5: TDQ 5.71 vs PTQ4DM 22.43 (DDIM CIFAR-10); 4.85 vs 7.06 (LDM-8 churches)',
  W4A4: 'paper, QAT W4A4: TDQ 4.48 vs LSQ 7.30 (DDIM CIFAR-10); 4.64 vs 5.06 (LDM-8 churches)',
  W3A3: 'paper, QAT W3A3: TDQ 6.48 (DDIM CIFAR-10), 6.57 (LDM-8 churches); LSQ not reported',
};

const fmt = (c: MeanCI) => (c.n < 2 ? c.mean.toFixed(2) : `${c.mean.toFixed(2)} ± ${c.half.toFixed(2)}`);

/** The markdown of every (steps, N) group of the ledger: FID mean ± 95% CI over seeds, paired differences TDQ - baseline, seconds per cell. */
export function tableMarkdown(l: Ledger): string {
  const cells = Object.values(l.cells);
  // The main table (DDIM 25) first, then the other step counts from most to fewest; larger N first.
  const groups = [...new Set(cells.map((c) => `${c.steps}|${c.n}`))].sort((x, y) => {
    const [sx, nx] = x.split('|').map(Number), [sy, ny] = y.split('|').map(Number);
    return Number(sy === 25) - Number(sx === 25) || sy - sx || ny - nx;
  });
  const out: string[] = [
    `<!-- generated by node dist/bench/tdq_table.js --ledger ... --table ...; do not edit: rerun -->`,
    `Checkpoint ${l.setup.ckpt} (sha256 ${l.setup.sha256.slice(0, 12)}); PTQ calibration: ${l.setup.calibSamples} DDIM trajectories of ${l.setup.calibSteps} steps (seed ${l.setup.calibSeed}; TDQ smoothing held out on seed ${l.setup.heldOutSeed}); FID-FMNIST against ${l.setup.reference}. Cells: mean ± 95% interval over seeds (Student t, n - 1 dof); one seed: no interval.`,
  ];
  for (const g of groups) {
    const [steps, n] = g.split('|').map(Number);
    const gc = cells.filter((c) => c.steps === steps && c.n === n);
    const methods = [...new Set(gc.map((c) => c.method))].sort((x, y) => order(x) - order(y));
    const bits = [...new Set(gc.filter((c) => c.method !== 'fp').map((c) => c.bits))].sort((x, y) => y.localeCompare(x));
    const seedsOf = (m: string, b: string) => new Map(gc.filter((c) => c.method === m && c.bits === b).map((c) => [c.seed, c.fid]));
    out.push('', `### DDIM ${steps} steps, N = ${n} samples per seed`, '');
    out.push(`| FID-FMNIST | ${bits.join(' | ')} |`, `|---|${bits.map(() => '---').join('|')}|`);
    const fpSeeds = seedsOf('fp', 'FP');
    if (fpSeeds.size) out.push(`| FP | ${bits.map(() => `${fmt(meanCI([...fpSeeds.values()]))} (seeds ${[...fpSeeds.keys()].join(',')})`).join(' | ')} |`);
    for (const m of methods.filter((x) => x !== 'fp')) {
      out.push(`| ${m} | ${bits.map((b) => {
        const s = seedsOf(m, b);
        return s.size ? `${fmt(meanCI([...s.values()]))} (seeds ${[...s.keys()].sort().join(',')})` : '—';
      }).join(' | ')} |`);
    }
    for (const [tdq, bases] of PAIRS) {
      const present = bases.filter((m) => methods.includes(m));
      if (!methods.includes(tdq) || !present.length) continue;
      out.push('', `Paired differences, ${tdq} − baseline on the same seeds (negative: ${tdq} better); per-seed values in brackets:`, '');
      out.push(`| ${tdq} − | ${bits.join(' | ')} |`, `|---|${bits.map(() => '---').join('|')}|`);
      for (const base of present) {
        out.push(`| ${base} | ${bits.map((b) => {
          const p = pairedDifferences(seedsOf(tdq, b), seedsOf(base, b));
          return p ? `${fmt(p.ci)} [${p.diffs.map((d) => d.toFixed(2)).join(', ')}]` : '—';
        }).join(' | ')} |`);
      }
    }
    const paper = bits.map((b) => PAPER[b]).filter(Boolean);
    if (paper.length) out.push('', ...paper.map((p) => `- ${p} (published numbers, shared/reference/published-numbers.md; compare orderings and relative gaps, not absolute FIDs).`));
    const smooth = gc.filter((c) => c.smoothing);
    if (smooth.length) out.push('', `TDQ smoothing bandwidth chosen on held-out trajectories (mean squared log-step error against the held-out steps per candidate bandwidth; 0 = the raw per-timestep steps, as ptq-tdq-raw): ${[...new Map(smooth.map((c) => [c.bits, c.smoothing!])).entries()].map(([b, sm]) => `${b}: ${sm.h} timesteps (${sm.errors.map((e) => `${e.h}: ${e.error.toExponential(2)}`).join(', ')})`).join('; ')}.`);
    const qatCells = gc.filter((c) => c.qat);
    if (qatCells.length && l.setup.qat) {
      const q = l.setup.qat;
      out.push('', `QAT cells: ${q.steps} steps of batch ${q.batch} from the FP checkpoint (warm-up ${q.warmup}; weights and TDQ MLPs at ${q.lr}, quantizer steps at ${q.lr * QAT_DEFAULTS.quantLrFactor}; initial steps '${q.calibMethod}', TDQ MLPs initialised '${q.tdqInit}'; -kd: distillation weight ${q.distillWeight}); final training loss: ${[...new Map(qatCells.map((c) => [`${c.method} ${c.bits}`, c.qat!.lastLoss])).entries()].map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')}.`);
    }
    out.push('', `Seconds per cell (sampling + FID; calibration once per method and bits; QAT training once per method and bits, all sittings): ${gc.map((c) => `${c.method} ${c.bits} s${c.seed}: ${c.seconds.toFixed(0)}${c.calibSeconds !== undefined ? ` (+${c.calibSeconds.toFixed(0)} ${c.qat ? 'load' : 'calib'})` : ''}${c.qat?.trainSeconds !== undefined ? ` (+${c.qat.trainSeconds.toFixed(0)} QAT)` : ''}, ${c.exec}`).join('; ')}.`);
  }
  const few = fewStepMarkdown(l);
  if (few) out.push('', '### Few-step experiment: the same models at each DDIM step count', '', few.trimEnd());
  if (cells.length) out.push('', '### Headline: TDQ against each baseline, ours beside the paper', '', headlineMarkdown(l).trimEnd());
  return `${out.join('\n')}\n`;
}

/** The paper's numbers (shared/reference/published-numbers.md): TDQ and the baseline it was compared with, per dataset; null: not reported. */
export const PAPER_ROWS: { bits: string; tdq: string; base: string; results: { data: string; tdq: number; base: number | null }[] }[] = [
  { bits: 'W4A4', tdq: 'qat-tdq', base: 'qat-lsq', results: [{ data: 'DDIM CIFAR-10', tdq: 4.48, base: 7.30 }, { data: 'LDM-8 churches', tdq: 4.64, base: 5.06 }] },
  { bits: 'W3A3', tdq: 'qat-tdq', base: 'qat-lsq', results: [{ data: 'DDIM CIFAR-10', tdq: 6.48, base: null }, { data: 'LDM-8 churches', tdq: 6.57, base: null }] },
  { bits: 'W8A5', tdq: 'ptq-tdq', base: 'ptq-ptq4dm', results: [{ data: 'DDIM CIFAR-10', tdq: 5.71, base: 22.43 }, { data: 'LDM-8 churches', tdq: 4.85, base: 7.06 }] },
];

/**
 * Whether TDQ wins a paired comparison: the 95% interval of TDQ − baseline
 * below zero (wins), above zero (loses), across zero (not resolved); one
 * seed gives no interval.
 */
export function verdict(ci: MeanCI): string {
  if (ci.n < 2) return 'one seed: no verdict';
  if (ci.hi < 0) return 'TDQ better';
  if (ci.lo > 0) return '**TDQ worse**';
  return 'not resolved (interval spans 0)';
}

/** The (steps, N) group the headline reads: DDIM 25 (else the most common step count) at the largest N with cells. */
export function headlineGroup(l: Ledger): { steps: number; n: number } | null {
  const cells = Object.values(l.cells);
  if (!cells.length) return null;
  const count = (k: (c: Cell) => number) => {
    const m = new Map<number, number>();
    for (const c of cells) m.set(k(c), (m.get(k(c)) ?? 0) + 1);
    return m;
  };
  const stepsCount = count((c) => c.steps);
  const steps = stepsCount.has(25) ? 25 : [...stepsCount].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0][0];
  const n = Math.max(...cells.filter((c) => c.steps === steps).map((c) => c.n));
  return { steps, n };
}

/**
 * The headline: every TDQ − baseline pair of the ledger at every setting
 * (one group: DDIM 25, the largest N), ours beside the paper's numbers where
 * the paper has that comparison, with the verdict of the paired interval, so
 * the settings where TDQ does not win read off the table.
 */
export function headlineMarkdown(l: Ledger): string {
  const g = headlineGroup(l);
  if (!g) return 'No cells yet: run the protocol (docs/protocol.md).\n';
  const gc = Object.values(l.cells).filter((c) => c.steps === g.steps && c.n === g.n);
  const seedsOf = (m: string, b: string) => new Map(gc.filter((c) => c.method === m && c.bits === b).map((c) => [c.seed, c.fid]));
  const fp = seedsOf('fp', 'FP');
  const bitsAll = [...new Set(gc.filter((c) => c.method !== 'fp').map((c) => c.bits))].sort((x, y) => y.localeCompare(x));
  const pct = (d: number, base: number) => {
    const r = (100 * d) / base;
    return `${d >= 0 ? '+' : ''}${r.toFixed(Math.abs(r) < 10 ? 1 : 0)}%`;
  };
  const out = [
    `Checkpoint ${l.setup.ckpt} (sha256 ${l.setup.sha256.slice(0, 12)}). FID-FMNIST, DDIM ${g.steps} steps, N = ${g.n} per seed${fp.size ? `; FP ${fmt(meanCI([...fp.values()]))} (seeds ${[...fp.keys()].join(',')})` : ''}. Ours: mean ± 95% interval over seeds; TDQ − baseline: paired on the same seeds (negative: TDQ better). The paper's FIDs are on CIFAR-10 / LSUN churches: compare orderings and relative gaps, not absolute values.`,
    '',
    '| setting | TDQ vs baseline | ours: TDQ | ours: baseline | ours: TDQ − baseline (rel.) | verdict | paper: TDQ vs baseline (rel.) |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const bits of bitsAll)
    for (const [tdq, bases] of PAIRS)
      for (const base of bases) {
        const t = seedsOf(tdq, bits), b = seedsOf(base, bits);
        const paper = PAPER_ROWS.find((r) => r.bits === bits && r.tdq === tdq && r.base === base);
        if (!t.size || !b.size) {
          if (paper && (t.size || b.size)) out.push(`| ${bits} | ${tdq} vs ${base} | ${t.size ? fmt(meanCI([...t.values()])) : 'not run'} | ${b.size ? fmt(meanCI([...b.values()])) : 'not run'} | — | — | ${paperText(paper)} |`);
          continue;
        }
        const p = pairedDifferences(t, b);
        const bm = meanCI([...b.values()]).mean;
        out.push(`| ${bits} | ${tdq} vs ${base} | ${fmt(meanCI([...t.values()]))} | ${fmt(meanCI([...b.values()]))} | ${p ? `${fmt(p.ci)} (${pct(p.ci.mean, bm)})` : 'no shared seed'} | ${p ? verdict(p.ci) : '—'} | ${paper ? paperText(paper) : '—'} |`);
      }
  const missing = PAPER_ROWS.filter((r) => !gc.some((c) => c.bits === r.bits && (c.method === r.tdq || c.method === r.base)));
  if (missing.length) out.push('', `Not measured yet (the paper's comparisons): ${missing.map((r) => `${r.bits} ${r.tdq} vs ${r.base} (${paperText(r)})`).join('; ')}.`);
  return `${out.join('\n')}\n`;
}

function paperText(r: (typeof PAPER_ROWS)[number]): string {
  return r.results.map((x) => (x.base === null ? `${x.data}: TDQ ${x.tdq.toFixed(2)}, baseline not reported` : `${x.data}: ${x.tdq.toFixed(2)} vs ${x.base.toFixed(2)} (${x.tdq - x.base >= 0 ? '+' : ''}${((100 * (x.tdq - x.base)) / x.base).toFixed(0)}%)`)).join('; ');
}

/** The few-step experiment: every model of the ledger measured at more than one DDIM step count (same N), one column per step count. */
export function fewStepMarkdown(l: Ledger): string {
  const cells = Object.values(l.cells);
  const units = new Map<string, Cell[]>();
  for (const c of cells) units.set(`${c.method}|${c.bits}|${c.n}`, [...(units.get(`${c.method}|${c.bits}|${c.n}`) ?? []), c]);
  const multi = [...units.values()].filter((u) => new Set(u.map((c) => c.steps)).size > 1);
  if (!multi.length) return '';
  const steps = [...new Set(multi.flatMap((u) => u.map((c) => c.steps)))].sort((x, y) => y - x);
  const cellText = (u: Cell[], s: number) => {
    const v = u.filter((c) => c.steps === s);
    return v.length ? `${fmt(meanCI(v.map((c) => c.fid)))} (${v.length} seed${v.length > 1 ? 's' : ''})` : '—';
  };
  const out = ['| model | N | ' + steps.map((s) => `DDIM ${s}`).join(' | ') + ' |', `|---|---|${steps.map(() => '---').join('|')}|`];
  multi.sort((x, y) => x[0].bits.localeCompare(y[0].bits) || order(x[0].method) - order(y[0].method));
  for (const u of multi) out.push(`| ${u[0].method}${u[0].bits === 'FP' ? '' : ` ${u[0].bits}`} | ${u[0].n} | ${steps.map((s) => cellText(u, s)).join(' | ')} |`);
  // TDQ − baseline at each step count: does TDQ's advantage hold with fewer steps?
  const diffs: string[] = [];
  for (const [tdq, bases] of PAIRS)
    for (const base of bases)
      for (const bits of [...new Set(multi.map((u) => u[0].bits))]) {
        const seeds = (m: string, s: number) => new Map(cells.filter((c) => c.method === m && c.bits === bits && c.steps === s).map((c) => [c.seed, c.fid]));
        const per = steps.map((s) => pairedDifferences(seeds(tdq, s), seeds(base, s)));
        if (per.every((p) => !p)) continue;
        diffs.push(`| ${tdq} − ${base} ${bits} | ${per.map((p) => (p ? `${fmt(p.ci)} ${verdict(p.ci)}` : '—')).join(' | ')} |`);
      }
  if (diffs.length) out.push('', `| paired | ${steps.map((s) => `DDIM ${s}`).join(' | ')} |`, `|---|${steps.map(() => '---').join('|')}|`, ...diffs);
  return `${out.join('\n')}\n`;
}

export const README_BEGIN = '<!-- tdq-protocol-table:begin -->';
export const README_END = '<!-- tdq-protocol-table:end -->';

/** The text of a README with its marked section replaced by the headline (and few-step) tables of a ledger. */
export function spliceReadme(text: string, l: Ledger, file: string, tableFile = ''): string {
  const i = text.indexOf(README_BEGIN), j = text.indexOf(README_END);
  if (i < 0 || j < 0 || j < i) throw new Error(`--readme ${file}: no '${README_BEGIN}' ... '${README_END}' section to write the table into`);
  const few = fewStepMarkdown(l);
  const body = [
    '<!-- generated from the protocol ledger by node dist/bench/tdq_table.js --ledger ... --readme ...; do not edit: rerun -->',
    headlineMarkdown(l).trimEnd(),
    ...(few ? ['', 'Few-step experiment (the same models at each DDIM step count):', '', few.trimEnd()] : []),
    ...(tableFile ? ['', `Every cell, its seconds and execution path: [${path.basename(tableFile)}](${tableFile}).`] : []),
  ].join('\n');
  return `${text.slice(0, i + README_BEGIN.length)}\n${body}\n${text.slice(j)}`;
}

export function writeReadmeSection(file: string, l: Ledger, tableFile = ''): void {
  const text = fs.readFileSync(file, 'utf8');
  const out = spliceReadme(text, l, file, tableFile && path.relative(path.dirname(path.resolve(file)), path.resolve(tableFile)));
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, out);
  fs.renameSync(tmp, file);
}

function order(m: string): number {
  const i = ORDER.indexOf(m);
  return i >= 0 ? i : 100;
}
