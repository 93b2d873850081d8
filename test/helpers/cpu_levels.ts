// The CPU kernel levels a test runs at: the scalar reference and every SIMD
// path this machine has (from the CPU's own report), so each fast kernel is
// compared with the reference wherever the suite runs.
import { native } from '../../src/tensor/native';

export type CpuLevel = 'scalar' | 'avx2' | 'avx512';
const ALL: CpuLevel[] = ['scalar', 'avx2', 'avx512'];

/** Every level this machine can run, scalar first. */
export function cpuLevels(): CpuLevel[] {
  return ALL.slice(0, ALL.indexOf(native().info().bestCpuLevel as CpuLevel) + 1);
}

/** Runs fn at one level, then restores the level that was set before. */
export function atLevel<T>(level: CpuLevel, fn: () => T): T;
export function atLevel<T>(level: CpuLevel, fn: () => Promise<T>): Promise<T>;
export function atLevel<T>(level: CpuLevel, fn: () => T | Promise<T>): T | Promise<T> {
  const prev = native().info().cpuLevel as CpuLevel;
  native().setCpuLevel(level);
  let r: T | Promise<T>;
  try {
    r = fn();
  } catch (e) {
    native().setCpuLevel(prev);
    throw e;
  }
  if (r instanceof Promise) return r.finally(() => native().setCpuLevel(prev));
  native().setCpuLevel(prev);
  return r;
}

/** Runs fn at every level this machine has, in order. */
export async function atEveryLevel(fn: (level: CpuLevel) => Promise<void>): Promise<void> {
  for (const level of cpuLevels()) await atLevel(level, () => fn(level));
}
