// The cells of issue 13's table as one plan (`--plan issue13` of the protocol
// mode, bench/tdq_protocol.ts), and what a plan will cost: a listing of every
// cell, done or to do, with a time estimate from the seconds that earlier
// ledgers recorded (`--dry-run`).
//
// A plan is a list of jobs, each one model (method, bits) and the DDIM step
// counts its cells are sampled at; every step count is crossed with every
// seed. The runner makes each job's model once (calibration, QAT training or
// loading) and runs its cells; a QAT run is trained once and reused by later
// jobs of the same (method, bits).
import type { Cell, Ledger } from './tdq_protocol';

export interface PlanJob {
  method: string;
  bits: string;
  steps: number[];
}

export const PLAN_NAMES = ['issue13'] as const;
export type PlanName = (typeof PLAN_NAMES)[number];

/** The PTQ and QAT settings of issue 13. */
export const ISSUE13 = {
  ptqBits: ['W8A8', 'W8A5', 'W8A4'],
  ptqMethods: ['ptq-tdq', 'ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm', 'ptq-tdq-raw'],
  qatBits: ['W8A8', 'W4A8', 'W8A4', 'W4A4', 'W3A3'],
  qatMethods: ['qat-tdq', 'qat-lsq'],
  pactBits: ['W4A4', 'W3A3'],
  /** The whole table's step count. */
  mainSteps: 25,
  /** The seed's default (and the paper's) step count, for the FP, W4A4 and W3A3 rows; with mainSteps and 10: the few-step experiment. */
  extraSteps: [100, 10],
  extraBits: ['W4A4', 'W3A3'],
} as const;

/**
 * Issue 13's table, in the order it is run: the FP row and the PTQ rows at
 * DDIM 25 (no training: the cheapest table first), the QAT rows (TDQ and LSQ
 * at every setting, PACT at W4A4 and W3A3), their distillation variants, and
 * last the few-step experiment: the FP, W4A4 and W3A3 models again at 100
 * (the seed's default) and 10 steps.
 */
export function issue13Plan(): PlanJob[] {
  const s = ISSUE13;
  const main = [s.mainSteps];
  const jobs: PlanJob[] = [{ method: 'fp', bits: 'FP', steps: main }];
  for (const bits of s.ptqBits) for (const method of s.ptqMethods) jobs.push({ method, bits, steps: main });
  const qat = (kd: boolean) => {
    const sfx = kd ? '-kd' : '';
    for (const bits of s.qatBits) for (const m of s.qatMethods) jobs.push({ method: `${m}${sfx}`, bits, steps: main });
    for (const bits of s.pactBits) jobs.push({ method: `qat-pact${sfx}`, bits, steps: main });
  };
  qat(false);
  qat(true);
  const extra = [...s.extraSteps];
  jobs.push({ method: 'fp', bits: 'FP', steps: extra });
  for (const kd of ['', '-kd'])
    for (const bits of s.extraBits) for (const m of [...s.qatMethods, 'qat-pact']) jobs.push({ method: `${m}${kd}`, bits, steps: extra });
  return jobs;
}

export function planJobs(name: PlanName): PlanJob[] {
  if (name === 'issue13') return issue13Plan();
  throw new Error(`unknown plan '${name as string}'`);
}

/**
 * The jobs of a plan restricted to the methods, bits and step counts given
 * (each filter only when given); jobs left without a step count are dropped.
 */
export function filterPlan(jobs: PlanJob[], f: { methods?: string[]; bits?: string[]; steps?: number[] }): PlanJob[] {
  return jobs
    .filter((j) => (!f.methods || f.methods.includes(j.method)) && (!f.bits || j.method === 'fp' || f.bits.includes(j.bits)))
    .map((j) => ({ ...j, steps: f.steps ? j.steps.filter((s) => f.steps!.includes(s)) : j.steps }))
    .filter((j) => j.steps.length > 0);
}

/** The jobs of the plain mode: every method at every bit setting (fp once), every job at every step count. */
export function crossJobs(methods: string[], bits: string[], steps: number[]): PlanJob[] {
  return [
    ...methods.filter((m) => m === 'fp').map((): PlanJob => ({ method: 'fp', bits: 'FP', steps })),
    ...bits.flatMap((b) => methods.filter((m) => m !== 'fp').map((method): PlanJob => ({ method, bits: b, steps }))),
  ];
}

// ---------------------------------------------------------------------------
// Time estimates from earlier ledgers

/**
 * Fallback for QAT training when no ledger has timed a QAT run on the real
 * model: seconds per training image (batch x steps). From the issue-4 table's
 * QAT runs (bench/results/tdq-table.md): 8 runs of 200 steps at batch 32 in
 * about an hour, 2-3 at a time on the 2-core machine, i.e. about 5 s a step.
 */
export const QAT_SECONDS_PER_IMAGE_FALLBACK = 0.15;
/** Distillation adds the teacher's forward pass to each training step (a guess: no -kd run has been timed). */
export const KD_FACTOR = 1.3;

export interface Rates {
  /** Seconds per sample and DDIM step (sampling and FID together), by execution ('fp32', 'int', 'fake'): all cells' seconds over all their samples x steps. */
  perSampleStep: Record<string, number>;
  /** Seconds of calibration of a PTQ job, by method ('*': any). */
  calib: Record<string, number>;
  /** Seconds of QAT training per training image (batch x steps). */
  qatPerImage: number;
  qatMeasured: boolean;
  /** Cells the rates come from. */
  cells: number;
}

const median = (v: number[]): number => {
  const s = [...v].sort((x, y) => x - y);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

/** The rates of the finished cells of some ledgers: sampling and QAT training as total seconds over total work, calibration the median per method. */
export function estimateRates(ledgers: Ledger[]): Rates {
  const cells = ledgers.flatMap((l) => Object.values(l.cells).map((c) => ({ c, batch: l.setup.qat?.batch })));
  const by = <K extends string>(key: (c: Cell) => K | null, val: (c: Cell, batch?: number) => number | null) => {
    const m = new Map<K, number[]>();
    for (const { c, batch } of cells) {
      const k = key(c);
      if (k === null) continue;
      const v = val(c, batch);
      if (v === null || !Number.isFinite(v)) continue;
      m.set(k, [...(m.get(k) ?? []), v]);
    }
    return Object.fromEntries([...m].map(([k, v]) => [k, median(v)])) as Record<K, number>;
  };
  // Seconds over work summed per execution (not a median of ratios): a few tiny test cells, all overhead, then weigh what they are worth.
  const ratio = <K extends string>(key: (c: Cell) => K | null, sec: (c: Cell) => number | null, work: (c: Cell, batch?: number) => number | null) => {
    const m = new Map<K, [number, number]>();
    for (const { c, batch } of cells) {
      const k = key(c);
      if (k === null) continue;
      const s = sec(c), w = work(c, batch);
      if (s === null || w === null || !Number.isFinite(s) || !(w > 0)) continue;
      const [s0, w0] = m.get(k) ?? [0, 0];
      m.set(k, [s0 + s, w0 + w]);
    }
    return Object.fromEntries([...m].map(([k, [s, w]]) => [k, s / w])) as Record<K, number>;
  };
  const perSampleStep = ratio((c) => c.exec, (c) => c.seconds, (c) => c.n * c.steps);
  const calib = by((c) => (c.method.startsWith('ptq-') ? c.method : null), (c) => c.calibSeconds ?? null);
  const all = Object.values(calib);
  if (all.length) calib['*'] = median(all);
  const qat = ratio((c) => (c.qat?.trainSeconds !== undefined ? 'qat' : null), (c) => c.qat!.trainSeconds!, (c, batch) => (batch ? (c.method.endsWith('-kd') ? KD_FACTOR : 1) * batch * c.qat!.steps : null));
  return { perSampleStep, calib, qatPerImage: qat.qat ?? QAT_SECONDS_PER_IMAGE_FALLBACK, qatMeasured: qat.qat !== undefined, cells: cells.length };
}

export interface PlanRow {
  method: string;
  bits: string;
  steps: number;
  seed: number;
  done: boolean;
  /** Estimated seconds of the cell (sampling and FID); NaN: no rate for its execution. */
  seconds: number;
  exec: string;
}

export interface PlanListing {
  rows: PlanRow[];
  /** Estimated one-off seconds per job: calibration (PTQ) or training (QAT), when it still has cells to do. */
  setup: { job: number; method: string; bits: string; seconds: number; what: string }[];
  todoSeconds: number;
  doneCells: number;
  text: string;
}

/**
 * Every cell of a plan, done (in the ledger) or to do, with estimated
 * seconds: cells from the rates by execution (linear in N x steps),
 * calibration per PTQ job, training per QAT (method, bits) not yet trained.
 */
export function listPlan(
  jobs: PlanJob[], o: { seeds: number[]; n: number; exec: string; qatSteps: number; qatBatch: number; has: (key: string) => boolean; key: (c: { method: string; bits: string; steps: number; seed: number; n: number }) => string; trained?: (method: string, bits: string) => boolean },
  rates: Rates,
): PlanListing {
  const rows: PlanRow[] = [];
  const setup: PlanListing['setup'] = [];
  const trainedHere = new Set<string>();
  const known = Object.values(rates.perSampleStep);
  // fake quantization: its own rate, else the slowest known one (it is not faster than fp32 or int)
  const rateOf = (exec: string) => rates.perSampleStep[exec] ?? (exec === 'fake' && known.length ? Math.max(...known) : NaN);
  for (const [ji, j] of jobs.entries()) {
    const exec = j.method === 'fp' ? 'fp32' : o.exec === 'fake' ? 'fake' : 'int';
    const cells = j.steps.flatMap((steps) => o.seeds.map((seed) => ({ method: j.method, bits: j.bits, steps, seed, n: o.n })));
    const todo = cells.filter((c) => !o.has(o.key(c)));
    for (const c of cells) rows.push({ ...c, done: !todo.includes(c), seconds: rateOf(exec) * c.n * c.steps, exec });
    if (!todo.length || j.method === 'fp') continue;
    if (j.method.startsWith('ptq-')) setup.push({ job: ji, method: j.method, bits: j.bits, seconds: rates.calib[j.method] ?? rates.calib['*'] ?? NaN, what: 'calibration' });
    else if (j.method.startsWith('qat-')) {
      const id = `${j.method}|${j.bits}`;
      if (trainedHere.has(id) || o.trained?.(j.method, j.bits)) continue;
      trainedHere.add(id);
      setup.push({ job: ji, method: j.method, bits: j.bits, seconds: rates.qatPerImage * o.qatBatch * o.qatSteps * (j.method.endsWith('-kd') ? KD_FACTOR : 1), what: `QAT training (${o.qatSteps} steps of ${o.qatBatch})` });
    }
  }
  const todoSeconds = rows.filter((r) => !r.done).reduce((s, r) => s + r.seconds, 0) + setup.reduce((s, x) => s + x.seconds, 0);
  const h = (s: number) => (Number.isFinite(s) ? (s >= 3600 ? `${(s / 3600).toFixed(1)} h` : `${(s / 60).toFixed(0)} min`) : '? (no rate)');
  const lines: string[] = [];
  let at = 0;
  for (const [ji, j] of jobs.entries()) {
    const jobRows = rows.slice(at, at + j.steps.length * o.seeds.length);
    at += jobRows.length;
    const todo = jobRows.filter((r) => !r.done);
    const su = setup.find((x) => x.job === ji);
    const setupText = su ? `, + ${h(su.seconds)} ${su.what}` : '';
    lines.push(`${j.method.padEnd(15)} ${j.bits.padEnd(5)} DDIM ${j.steps.join('/').padEnd(7)} ${jobRows.length - todo.length}/${jobRows.length} done${todo.length ? `; to do: ${todo.map((r) => `s${r.seed}@${r.steps}`).join(' ')} ~${h(todo.reduce((s, r) => s + r.seconds, 0))} (${todo[0].exec})${setupText}` : ''}`);
  }
  const done = rows.filter((r) => r.done).length;
  const rateText = Object.entries(rates.perSampleStep).map(([k, v]) => `${k} ${(v * 1000).toFixed(1)} ms`).join(', ') || 'none';
  lines.push(
    '',
    `${rows.length} cells (N = ${o.n}, seeds ${o.seeds.join(',')}): ${done} done, ${rows.length - done} to do; estimated ${h(todoSeconds)} of the machine as the ledgers' cells ran (${rates.cells} cells measured).`,
    `rates: seconds per sample and DDIM step (sampling + FID): ${rateText}; calibration per PTQ job: ${Number.isFinite(rates.calib['*']) ? `${rates.calib['*'].toFixed(0)} s` : 'not measured'}; QAT training: ${(rates.qatPerImage * 1000).toFixed(0)} ms per image${rates.qatMeasured ? '' : ' (not measured on this model: the issue-4 runs\' rough rate)'}${jobs.some((j) => j.method.endsWith('-kd')) ? `, x${KD_FACTOR} with distillation (guess)` : ''}.`,
  );
  return { rows, setup, todoSeconds, doneCells: done, text: lines.join('\n') };
}
