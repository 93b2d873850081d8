// What the trainer does with a sample whose file cannot be read (a corrupt
// PNG in the middle of a dataset): 'stop' writes a checkpoint of the last
// good state and stops with an error naming the file; 'skip' leaves the
// sample out of its batch, counts it and logs the file, and trains on.
// A data error is any error with a string `file` property (the data
// package's DataFileError): other errors are bugs and always propagate.
import type { Dataset } from '../data/dataset';
import type { BatchArrays } from '../data/loader';

export type BadDataPolicy = 'skip' | 'stop';
export const BAD_DATA_POLICIES: readonly BadDataPolicy[] = ['stop', 'skip'];

/** An error of a data source that names the file it could not read. */
export function dataFileOf(e: unknown): string | null {
  if (e instanceof Error && typeof (e as { file?: unknown }).file === 'string') return (e as unknown as { file: string }).file;
  return null;
}

/** Training stopped at a bad data file (policy 'stop'). */
export class BadDataError extends Error {
  constructor(
    readonly file: string,
    readonly step: number,
    readonly checkpoint: string | null,
    readonly error: Error,
  ) {
    super(
      `bad data file ${file} at step ${step}: ${error.message}. ` +
        (checkpoint ? `Checkpoint of step ${step - 1}: ${checkpoint}. ` : '') +
        `Fix or remove the file and --resume, or --resume with --on-bad-data skip to leave such samples out.`,
    );
    this.name = 'BadDataError';
  }
}

export interface BadSample {
  index: number;
  file: string;
  message: string;
}

/**
 * A view of `ds` whose get() records a data-file error and writes zeros
 * instead of throwing (the rows are then removed by dropBadRows). With
 * policy 'stop' it is `ds` itself.
 */
export class SkippingDataset {
  readonly dataset: Dataset;
  private pending: BadSample[] = [];

  constructor(inner: Dataset, policy: BadDataPolicy) {
    if (policy === 'stop') {
      this.dataset = inner;
      return;
    }
    const get = (index: number, out?: Float32Array, offset = 0): Float32Array => {
      try {
        return inner.get(index, out, offset);
      } catch (e) {
        const file = dataFileOf(e);
        if (file === null) throw e;
        this.pending.push({ index, file, message: (e as Error).message });
        const size = inner.channels * inner.height * inner.width;
        const arr = out ?? new Float32Array(size);
        arr.fill(0, offset, offset + size);
        return arr;
      }
    };
    this.dataset = new Proxy(inner, {
      get(target, prop) {
        if (prop === 'get') return get;
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** The bad samples met since the last call. */
  take(): BadSample[] {
    const p = this.pending;
    this.pending = [];
    return p;
  }
}

/** The batch without the rows of `bad` samples, or null when none is left. */
export function dropBadRows(a: BatchArrays, bad: readonly BadSample[]): BatchArrays | null {
  if (!bad.length) return a;
  const badIdx = new Set(bad.map((b) => b.index));
  const [n, c, h, w] = a.shape;
  const size = c * h * w;
  const rows: number[] = [];
  for (let i = 0; i < n; ++i) if (!badIdx.has(a.indices[i])) rows.push(i);
  if (!rows.length) return null;
  const data = new Float32Array(rows.length * size);
  rows.forEach((r, k) => data.set(a.data.subarray(r * size, (r + 1) * size), k * size));
  return {
    data,
    shape: [rows.length, c, h, w],
    labels: Int32Array.from(rows, (r) => a.labels[r]),
    indices: Int32Array.from(rows, (r) => a.indices[r]),
    epoch: a.epoch,
  };
}
