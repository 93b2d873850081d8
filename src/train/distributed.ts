// What data-parallel training checks across ranks: that every rank starts
// from the same config and checkpoint (refusing to start otherwise, naming the
// difference), and that the weights stay identical (a checksum every N steps;
// a mismatch is an error, not silent drift).
import type { Communicator } from '../dist/communicator';
import { scalars } from '../dist/communicator';
import { reshape } from '../tensor/ops/elementwise';
import { fromArray, runOp1, type Tensor } from '../tensor/tensor';

/** FNV-1a over the UTF-16 code units: the same on every rank for the same text. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; ++i) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** The first path at which two JSON values differ, e.g. 'config.training.batch_size: 8 vs 16'. */
export function firstDifference(a: unknown, b: unknown, at = ''): string | null {
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) {
    return JSON.stringify(a) === JSON.stringify(b) ? null : `${at || '(top level)'}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`;
  }
  const ka = Object.keys(a as object), kb = Object.keys(b as object);
  for (const k of [...new Set([...ka, ...kb])]) {
    const d = firstDifference((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], at ? `${at}.${k}` : k);
    if (d) return d;
  }
  return null;
}

async function rows(t: Tensor, width: number): Promise<number[][]> {
  const v = Array.from((await t.data()) as Float32Array);
  t.dispose();
  return Array.from({ length: v.length / width }, (_, r) => v.slice(r * width, (r + 1) * width));
}

/**
 * Every rank must hold the same `what` (the config, the checkpoint it starts
 * from, the global batch): otherwise every rank throws, the ones that differ
 * naming the first difference from rank 0.
 */
export async function checkRanksAgree(comm: Communicator, what: Record<string, unknown>): Promise<void> {
  if (comm.size === 1) return;
  const mine = JSON.stringify(what);
  const h = hash32(mine);
  // float32 holds integers below 2^24 exactly: the hash in 16-bit halves.
  const all = await rows(comm.allgather(scalars([h & 0xffff, h >>> 16, mine.length])), 3);
  const differ = all.map((r, i) => (r.join() === all[0].join() ? -1 : i)).filter((i) => i >= 0);
  if (!differ.length) return;
  const text0 = await broadcastString(comm, mine);
  const diff = firstDifference(JSON.parse(text0), JSON.parse(mine));
  throw new Error(
    diff
      ? `rank ${comm.rank} does not agree with rank 0: ${diff} (rank 0's value first); every rank must start from the same config and checkpoint`
      : `ranks ${differ.join(', ')} do not agree with rank 0 on the config or checkpoint (their messages name the difference)`,
  );
}

/** Throws when the ranks' weights differ (sum of squares, accumulated in double, compared exactly). */
export async function checkWeightsAgree(comm: Communicator, params: readonly Tensor[], step: number): Promise<void> {
  if (comm.size === 1) return;
  const probe = runOp1('grad_norm_sq', [...params]);
  const sums = await rows(comm.allgather(reshape(probe, [1])), 1);
  probe.dispose();
  const bad = sums.map((r, i) => (r[0] === sums[0][0] ? -1 : i)).filter((i) => i >= 0);
  if (bad.length) throw new Error(`the ranks' weights differ at step ${step} (sum of squares per rank: ${sums.map((r) => r[0]).join(', ')}): ranks ${bad.join(', ')} drifted from rank 0`);
}

/** Rank 0's string on every rank (the run folder that rank 0 named). */
export async function broadcastString(comm: Communicator, s: string): Promise<string> {
  if (comm.size === 1) return s;
  const mine = Buffer.from(s, 'utf8');
  const lens = await rows(comm.allgather(scalars([mine.length])), 1);
  const buf = fromArray(comm.rank === 0 ? mine : new Uint8Array(lens[0][0]), [lens[0][0]], 'uint8');
  comm.broadcast([buf], 0);
  const out = Buffer.from((await buf.data()) as Uint8Array).toString('utf8');
  buf.dispose();
  return out;
}

/**
 * The allreduces since the last call (which resets the counts): ms the
 * communication thread spent in them, ms the stream waited for them (what the
 * backward pass did not hide), and how many; null for one process.
 */
export async function allreduceTimes(comm: Communicator): Promise<{ allreduceMs: number; waitedMs: number; count: number } | null> {
  if (comm.backend !== 'mpi') return null;
  const t = runOp1('dist_stats', []);
  const [allreduceMs, waitedMs, count] = Array.from((await t.data()) as Float32Array);
  t.dispose();
  return { allreduceMs, waitedMs, count };
}
