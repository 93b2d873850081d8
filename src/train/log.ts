// Training logs: a console line and a JSONL/CSV record every N steps (the
// loss averaged over those steps, the current learning rate, images/s), and a
// loss-curve PNG (drawn by io/plot.ts) at the end of a run.
import fs from 'node:fs';
import path from 'node:path';

import { writeFileAtomicSync } from '../io/atomic';
import { type PlotSeries, plotLines, smooth } from '../io/plot';

export interface StepMetrics {
  loss: number;
  lr: number;
  /** Any other numbers (grad_norm, ...): averaged over the window like the loss. */
  [key: string]: number;
}

export interface LogRecord {
  step: number;
  loss: number;
  lr: number;
  images_per_s: number;
  elapsed_s: number;
  [key: string]: number;
}

export type LogFormat = 'jsonl' | 'csv';

export interface LoggerOptions {
  /** Images per step (batch size x accumulation), for images/s. */
  batchSize: number;
  /** Steps per record and console line (default 50). */
  every?: number;
  /** Folder for log.jsonl, log.csv and loss.png; absent: console only. */
  dir?: string;
  formats?: readonly LogFormat[];
  /** Where console lines go (default console.log); null: nowhere. */
  print?: ((line: string) => void) | null;
  /** The run's last step, shown as step/max and used for the ETA. */
  maxSteps?: number;
  /**
   * Continuing a run from this step: existing records up to it are kept (and
   * plotted), later ones (from after the checkpoint) dropped from the files.
   * Without it, a run starts its log files afresh.
   */
  resumeStep?: number;
}

const BASE_COLUMNS = ['step', 'loss', 'lr', 'images_per_s', 'elapsed_s'] as const;

function fmtNum(v: number, digits = 4): string {
  if (!Number.isFinite(v)) return String(v).toLowerCase();
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e5 ? String(Number(v.toPrecision(digits))) : v.toExponential(digits - 1);
}

function fmtDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

/** Reads a JSONL log, skipping a torn last line (a killed writer). */
export function readJsonlLog(file: string): LogRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: LogRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as Record<string, number | null>;
      for (const k of Object.keys(r)) if (r[k] === null) r[k] = NaN;
      out.push(r as LogRecord);
    } catch {
      /* a partial line */
    }
  }
  return out;
}

/** Reads a CSV log written by TrainLogger (header line, numbers, 'nan'). */
export function readCsvLog(file: string): LogRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const [head, ...rows] = text.split('\n');
  const cols = head.split(',');
  const out: LogRecord[] = [];
  for (const row of rows) {
    const cells = row.split(',');
    if (cells.length !== cols.length) continue; // empty or torn line
    const r: Record<string, number> = {};
    cols.forEach((c, i) => {
      if (cells[i] !== '') r[c] = cells[i] === 'nan' ? NaN : Number(cells[i]);
    });
    out.push(r as LogRecord);
  }
  return out;
}

// JSON has no NaN or Infinity: they are written as null (read back as NaN).
function jsonLine(r: LogRecord): string {
  return JSON.stringify(r, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n';
}

function csvLine(cols: readonly string[], r: Record<string, number>): string {
  return cols.map((c) => (r[c] === undefined ? '' : Number.isFinite(r[c]) ? String(r[c]) : 'nan')).join(',') + '\n';
}

export class TrainLogger {
  readonly every: number;
  private readonly opts: LoggerOptions;
  private readonly print: ((line: string) => void) | null;
  private readonly all: LogRecord[] = [];
  private csvColumns: string[] | null = null;
  private sums = new Map<string, number>();
  private counts = new Map<string, number>();
  private windowSteps = 0;
  private lastLr = NaN;
  private readonly start = performance.now();
  private windowStart = performance.now();
  private readonly elapsedBefore: number;
  private readonly firstStep: number;
  private closed = false;

  constructor(opts: LoggerOptions) {
    if (!(opts.batchSize > 0)) throw new RangeError(`TrainLogger: batchSize must be positive, got ${opts.batchSize}`);
    this.every = opts.every ?? 50;
    if (!Number.isInteger(this.every) || this.every < 1) throw new RangeError(`TrainLogger: every must be a positive integer, got ${this.every}`);
    this.opts = opts;
    this.print = opts.print === undefined ? (l) => console.log(l) : opts.print;
    this.firstStep = opts.resumeStep ?? 0;
    if (opts.dir) {
      fs.mkdirSync(opts.dir, { recursive: true });
      if (opts.resumeStep !== undefined) this.truncateFiles(opts.resumeStep);
      else for (const f of this.formats()) fs.rmSync(this.file(f), { force: true });
    }
    this.elapsedBefore = this.all.length ? this.all[this.all.length - 1].elapsed_s : 0;
  }

  private formats(): readonly LogFormat[] {
    return this.opts.formats ?? ['jsonl', 'csv'];
  }

  file(kind: LogFormat | 'png'): string {
    if (!this.opts.dir) throw new Error('TrainLogger: no log folder');
    return path.join(this.opts.dir, kind === 'png' ? 'loss.png' : `log.${kind}`);
  }

  // Keeps the records up to `step` in memory and in the files, rewritten atomically.
  private truncateFiles(step: number): void {
    const fmts = this.formats();
    const all = fmts.includes('jsonl') ? readJsonlLog(this.file('jsonl')) : readCsvLog(this.file('csv'));
    const kept = all.filter((r) => r.step <= step);
    this.all.push(...kept);
    if (fmts.includes('jsonl')) writeFileAtomicSync(this.file('jsonl'), kept.map(jsonLine).join(''));
    if (fmts.includes('csv')) {
      let header: string[] = [];
      try {
        header = fs.readFileSync(this.file('csv'), 'utf8').split('\n')[0].split(',').filter(Boolean);
      } catch {
        /* no CSV yet: its columns come from the next record */
      }
      if (header.length) {
        this.csvColumns = header;
        writeFileAtomicSync(this.file('csv'), header.join(',') + '\n' + kept.map((r) => csvLine(header, r)).join(''));
      }
    }
  }

  /** Records one step; returns the record when this step completes a window. */
  step(step: number, metrics: StepMetrics): LogRecord | null {
    if (this.closed) throw new Error('TrainLogger: step() after close()');
    for (const [k, v] of Object.entries(metrics)) {
      if (k === 'lr') continue;
      this.sums.set(k, (this.sums.get(k) ?? 0) + v);
      this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    }
    this.lastLr = metrics.lr;
    this.windowSteps += 1;
    if (step % this.every !== 0 && step !== this.opts.maxSteps) return null;
    return this.emit(step);
  }

  private emit(step: number): LogRecord {
    const now = performance.now();
    const dt = (now - this.windowStart) / 1000;
    const rec: LogRecord = {
      step,
      loss: NaN,
      lr: this.lastLr,
      images_per_s: dt > 0 ? (this.windowSteps * this.opts.batchSize) / dt : NaN,
      elapsed_s: this.elapsedBefore + (now - this.start) / 1000,
    };
    for (const [k, s] of this.sums) rec[k] = s / (this.counts.get(k) ?? 1);
    this.sums.clear();
    this.counts.clear();
    this.windowSteps = 0;
    this.windowStart = now;
    this.all.push(rec);
    this.write(rec);
    if (this.print) this.print(this.consoleLine(rec));
    return rec;
  }

  private consoleLine(r: LogRecord): string {
    const max = this.opts.maxSteps;
    const width = max ? String(max).length : 6;
    let line = `step ${String(r.step).padStart(width)}${max ? `/${max}` : ''}  loss ${fmtNum(r.loss)}  lr ${r.lr.toExponential(2)}  ${r.images_per_s.toFixed(1)} img/s`;
    for (const k of Object.keys(r)) {
      if (!(BASE_COLUMNS as readonly string[]).includes(k)) line += `  ${k} ${fmtNum(r[k])}`;
    }
    if (max && r.step < max) {
      const done = r.step - this.firstStep;
      const secs = (r.elapsed_s - this.elapsedBefore) / Math.max(done, 1);
      line += `  eta ${fmtDuration(secs * (max - r.step))}`;
    }
    return line;
  }

  private write(r: LogRecord): void {
    if (!this.opts.dir) return;
    const fmts = this.formats();
    if (fmts.includes('jsonl')) {
      fs.appendFileSync(this.file('jsonl'), jsonLine(r));
    }
    if (fmts.includes('csv')) {
      if (!this.csvColumns) {
        // Columns are fixed by the first record; keys appearing later are in the JSONL only.
        this.csvColumns = [...BASE_COLUMNS, ...Object.keys(r).filter((k) => !(BASE_COLUMNS as readonly string[]).includes(k)).sort()];
        fs.writeFileSync(this.file('csv'), this.csvColumns.join(',') + '\n');
      }
      fs.appendFileSync(this.file('csv'), csvLine(this.csvColumns, r));
    }
  }

  /** Every record of the run so far (including those kept on resume). */
  records(): readonly LogRecord[] {
    return this.all;
  }

  /**
   * Ends the log: emits a last partial window (when `step` is given and steps
   * are pending) and, with a log folder, writes loss.png. Returns its path.
   */
  close(opts: { step?: number; plot?: boolean; logY?: boolean } = {}): string | null {
    if (this.closed) return null;
    if (opts.step !== undefined && this.windowSteps > 0) this.emit(opts.step);
    this.closed = true;
    if (!this.opts.dir || opts.plot === false) return null;
    const pts = this.all.map((r) => ({ x: r.step, y: r.loss }));
    if (pts.filter((p) => Number.isFinite(p.y)).length < 2) return null;
    const series: PlotSeries[] = [{ name: 'loss', points: pts }];
    if (pts.length >= 20) series.push({ name: 'smoothed', points: smooth(pts, Math.max(5, Math.round(pts.length / 25))) });
    const file = this.file('png');
    writeFileAtomicSync(file, plotLines(series, { title: 'training loss', xLabel: 'step', logY: opts.logY ?? true }));
    return file;
  }
}
