// Shared pieces of the fuzz tests: byte mutations of valid seeds (fast-check
// arbitraries), the "clean outcome" check (a result, or an Error whose message
// names the file or key; never a non-Error throw, a hang or a huge
// allocation), the kept corpus under test/fuzz/corpus, and small builders of
// PNG chunks. Runs are seeded (TDQ_FUZZ_SEED) and bounded in count
// (TDQ_FUZZ_RUNS) and time (TDQ_FUZZ_MS per target; when set, these
// replace every target's own defaults), so the suite stays fast
// and a failure replays; raise both to fuzz longer by hand.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';

export { fc };

export const FUZZ_SEED = Number(process.env.TDQ_FUZZ_SEED ?? 20261202);
export const FUZZ_RUNS = Number(process.env.TDQ_FUZZ_RUNS ?? 300);
export const FUZZ_MS = Number(process.env.TDQ_FUZZ_MS ?? 2500);
/** One input may take at most this long (a hang shows as a failure, not a stuck suite). */
export const MAX_RUN_MS = 3000;
/** Peak memory may grow at most this much over a whole target's run. */
export const MAX_RSS_GROWTH = 400 * 2 ** 20;

/** test/fuzz/corpus (the sources, not dist). */
export const CORPUS = path.resolve(__dirname, '..', '..', '..', 'test', 'fuzz', 'corpus');

export function corpusFiles(target: string): string[] {
  const dir = path.join(CORPUS, target);
  return fs.readdirSync(dir).filter((n) => !n.startsWith('.')).sort().map((n) => path.join(dir, n));
}

export function fuzzTmp(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `tdq-fuzz-${prefix}-`));
}

/** "Interesting" 32-bit values for lying lengths, sizes and offsets. */
const U32_EDGES = [0, 1, 2, 7, 8, 255, 256, 0x7fff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'u32'; at: number; value: number; le: boolean }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; len: number }
  | { kind: 'byte'; at: number; value: number };

const pos = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: pos, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: pos }),
  fc.record({ kind: fc.constant('u32' as const), at: pos, value: fc.oneof(fc.constantFrom(...U32_EDGES), fc.nat({ max: 0xffffffff })), le: fc.boolean() }),
  fc.record({ kind: fc.constant('insert' as const), at: pos, bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: pos, len: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant('byte' as const), at: pos, value: fc.integer({ min: 0, max: 255 }) }),
) as fc.Arbitrary<Mutation>;

/** Applies mutations in order; positions are fractions of the current length (biased to the header by `headBias`). */
export function mutate(seed: Uint8Array, muts: readonly Mutation[], headBias = 0): Uint8Array {
  let b = Buffer.from(seed);
  for (const m of muts) {
    const span = headBias > 0 ? Math.min(b.length, headBias) : b.length;
    const at = Math.floor(m.at * (span + 1));
    switch (m.kind) {
      case 'flip':
        if (at < b.length) b[at] ^= 1 << m.bit;
        break;
      case 'byte':
        if (at < b.length) b[at] = m.value;
        break;
      case 'truncate':
        b = b.subarray(0, Math.floor(m.at * b.length));
        break;
      case 'u32':
        if (at + 4 <= b.length) (m.le ? b.writeUInt32LE(m.value >>> 0, at) : b.writeUInt32BE(m.value >>> 0, at));
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]);
        break;
    }
  }
  return new Uint8Array(b);
}

/** A mutated copy of one of the seeds: 1 to 4 mutations, half of them aimed at the first `headBias` bytes. */
export function mutatedArb(seeds: readonly Uint8Array[], headBias = 64): fc.Arbitrary<Uint8Array> {
  return fc
    .tuple(fc.nat({ max: seeds.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 4 }), fc.boolean())
    .map(([i, muts, head]) => mutate(seeds[i], muts, head ? headBias : 0));
}

export type Outcome = { ok: true; value: unknown } | { ok: false; error: Error };

/**
 * Runs `fn` and checks its outcome is clean: a value, or a thrown Error (not
 * a string, not undefined) whose message is non-empty and names one of
 * `names` (the file, or a key). Also bounds the time one input may take.
 */
export async function cleanOutcome(fn: () => unknown, names: readonly string[], what = 'input'): Promise<Outcome> {
  const t0 = process.hrtime.bigint();
  let out: Outcome;
  try {
    out = { ok: true, value: await fn() };
  } catch (e) {
    assert.ok(e instanceof Error, `${what}: threw a non-Error: ${String(e)}`);
    assert.ok(e.message.length > 0, `${what}: an Error without a message`);
    assert.ok(names.some((n) => e.message.includes(n)), `${what}: the message names none of ${names.join(', ')}: ${e.message}`);
    assert.ok(!/\[object Object\]|\[native code\]/.test(e.message), `${what}: unclear message: ${e.message}`);
    out = { ok: false, error: e };
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.ok(ms < MAX_RUN_MS, `${what}: took ${ms.toFixed(0)} ms (limit ${MAX_RUN_MS})`);
  return out;
}

/** Peak resident memory in bytes so far. */
export function peakRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export interface FuzzStats {
  runs: number;
  ok: number;
  errors: number;
}

/**
 * Checks `check` on generated inputs: seeded, at most FUZZ_RUNS runs and about
 * FUZZ_MS of time, and peak memory growing at most MAX_RSS_GROWTH.
 */
export async function fuzz<T>(arb: fc.Arbitrary<T>, check: (input: T) => Promise<Outcome>, opts: { runs?: number; ms?: number } = {}): Promise<FuzzStats> {
  const stats: FuzzStats = { runs: 0, ok: 0, errors: 0 };
  const rss0 = peakRss();
  await fc.assert(
    fc.asyncProperty(arb, async (input) => {
      const o = await check(input);
      stats.runs += 1;
      if (o.ok) stats.ok += 1;
      else stats.errors += 1;
    }),
    { seed: FUZZ_SEED, numRuns: process.env.TDQ_FUZZ_RUNS ? FUZZ_RUNS : (opts.runs ?? FUZZ_RUNS), interruptAfterTimeLimit: process.env.TDQ_FUZZ_MS ? FUZZ_MS : (opts.ms ?? FUZZ_MS), markInterruptAsFailure: false, includeErrorInReport: true },
  );
  const growth = peakRss() - rss0;
  assert.ok(growth < MAX_RSS_GROWTH, `peak memory grew by ${(growth / 2 ** 20).toFixed(0)} MiB during fuzzing`);
  assert.ok(stats.runs > 0, 'no fuzz run completed');
  if (process.env.TDQ_FUZZ_VERBOSE) console.log(`fuzz: ${JSON.stringify(stats)}, peak memory +${(growth / 2 ** 20).toFixed(0)} MiB`);
  return stats;
}

// PNG chunk builders (for seeds and hand-made bad files).
const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** One PNG chunk with a correct length and CRC. */
export function pngChunk(type: string, data: Uint8Array): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/** Recomputes the CRC of every whole chunk, so a mutation reaches the decoder instead of its CRC check. */
export function fixPngCrcs(bytes: Uint8Array): Uint8Array {
  const b = Buffer.from(bytes);
  let off = 8;
  while (off + 12 <= b.length) {
    const len = b.readUInt32BE(off);
    if (off + 12 + len > b.length) break;
    b.writeUInt32BE(crc32(b.subarray(off + 4, off + 8 + len)), off + 8 + len);
    off += 12 + len;
  }
  return new Uint8Array(b);
}

export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A PNG file from its parts: IHDR says width x height (default 8-bit gray), then the given IDAT bytes (and PLTE) and IEND. */
export function pngFile(width: number, height: number, idat: Uint8Array, colorType = 0, opts: { bitDepth?: number; interlace?: number; plte?: Uint8Array } = {}): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = opts.bitDepth ?? 8;
  ihdr[9] = colorType;
  ihdr[12] = opts.interlace ?? 0;
  const plte = opts.plte ? [pngChunk('PLTE', opts.plte)] : [];
  return Buffer.concat([PNG_SIGNATURE, pngChunk('IHDR', ihdr), ...plte, pngChunk('IDAT', idat), pngChunk('IEND', new Uint8Array(0))]);
}
