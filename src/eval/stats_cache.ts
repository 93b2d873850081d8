// Reference statistics cached per dataset: the mean and covariance (float64)
// of a dataset's features, and optionally the features themselves (float32,
// for KID and precision/recall), in one safetensors file. The file name and
// its metadata carry a key: a hash of the dataset's fingerprint (its files'
// names, sizes and modification times, or their contents) and of everything
// that shapes the features (feature network and its weights, resize mode,
// sample count, image size...). A changed dataset or configuration gives a
// new key, so stale statistics are never read; they are recomputed and
// written next to the old ones.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { inspectSafetensors } from '../io/safetensors';
import { type Features, type GaussianStats, features as makeFeatures } from './metrics';

/** The default cache folder: $TDQ_CACHE_DIR/eval-stats, else ~/.cache/tdq-native/eval-stats. */
export function defaultStatsCacheDir(): string {
  const base = process.env.TDQ_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'tdq-native');
  return path.join(base, 'eval-stats');
}

/**
 * A fingerprint of files by path (relative to root), size and modification
 * time: cheap, and changes whenever a file is added, removed, renamed or
 * rewritten. With `content`, the bytes are hashed instead of the times (for
 * data that is copied around with new times, or tested byte for byte).
 */
export function fingerprintFiles(files: readonly string[], opts: { root?: string; content?: boolean } = {}): string {
  const h = crypto.createHash('sha256');
  const entries = files.map((f) => ({ f, rel: opts.root ? path.relative(opts.root, f) : f })).sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  for (const { f, rel } of entries) {
    const st = fs.statSync(f);
    h.update(`${rel.split(path.sep).join('/')}\0${st.size}\0`);
    if (opts.content) h.update(fs.readFileSync(f));
    else h.update(`${Math.round(st.mtimeMs)}\0`);
  }
  return h.digest('hex');
}

/** JSON with sorted object keys, so equal configurations hash equally. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export function statsKey(fingerprint: string, config: Record<string, unknown>): string {
  return crypto.createHash('sha256').update(`${fingerprint}\n${canonicalJson(config)}`).digest('hex').slice(0, 32);
}

export interface CachedStats {
  stats: GaussianStats;
  /** Present when the file holds them. */
  features?: Features;
  key: string;
  file: string;
  config: Record<string, unknown>;
}

const FORMAT = 'tdq-native eval stats v1';

function safeName(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80) || 'stats';
}

export function statsFile(cacheDir: string, name: string, key: string): string {
  return path.join(cacheDir, `${safeName(name)}-${key}.safetensors`);
}

/**
 * Writes mu (F64), sigma (F64) and optionally features (F32) with the key and
 * configuration in the metadata; atomically (temporary file, then rename).
 */
export async function writeStatsFile(
  file: string,
  key: string,
  config: Record<string, unknown>,
  stats: GaussianStats,
  feats?: Features,
): Promise<void> {
  const d = stats.dim;
  const parts: [string, string, number[], Uint8Array][] = [
    ['mu', 'F64', [d], new Uint8Array(stats.mu.buffer, stats.mu.byteOffset, stats.mu.byteLength)],
    ['sigma', 'F64', [d, d], new Uint8Array(stats.sigma.buffer, stats.sigma.byteOffset, stats.sigma.byteLength)],
  ];
  if (feats) {
    const f32 = feats.data instanceof Float32Array ? feats.data : Float32Array.from(feats.data);
    parts.push(['features', 'F32', [feats.n, feats.dim], new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength)]);
  }
  const header: Record<string, unknown> = {
    __metadata__: { format: FORMAT, key, config: canonicalJson(config), n: String(stats.n), dim: String(d) },
  };
  let off = 0;
  for (const [name, dtype, shape, bytes] of parts) {
    header[name] = { dtype, shape, data_offsets: [off, off + bytes.length] };
    off += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // keeps the data 8-byte aligned
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.write(len);
    await fh.write(Buffer.from(json));
    for (const [, , , bytes] of parts) await fh.write(bytes);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await fsp.rename(tmp, file);
}

/** Reads a stats file; throws when it is malformed or its key differs from `key` (when given). */
export async function readStatsFile(file: string, key?: string): Promise<CachedStats> {
  const h = await inspectSafetensors(file);
  if (h.metadata.format !== FORMAT) throw new Error(`${file}: not an eval stats file (format ${JSON.stringify(h.metadata.format)})`);
  if (key !== undefined && h.metadata.key !== key) throw new Error(`${file}: stats key ${h.metadata.key} does not match ${key}`);
  const mu = h.tensors.get('mu'), sigma = h.tensors.get('sigma'), feats = h.tensors.get('features');
  if (!mu || !sigma || mu.dtype !== 'F64' || sigma.dtype !== 'F64' || mu.shape.length !== 1)
    throw new Error(`${file}: expected F64 tensors 'mu' (d) and 'sigma' (d, d)`);
  const d = mu.shape[0];
  if (sigma.shape.join() !== `${d},${d}`) throw new Error(`${file}: 'sigma' has shape [${sigma.shape.join(', ')}], expected [${d}, ${d}]`);
  const fh = await fsp.open(file, 'r');
  try {
    const read = async (e: { dataOffsets: [number, number] }) => {
      const buf = new ArrayBuffer(e.dataOffsets[1] - e.dataOffsets[0]);
      const { bytesRead } = await fh.read(new Uint8Array(buf), 0, buf.byteLength, h.dataStart + e.dataOffsets[0]);
      if (bytesRead !== buf.byteLength) throw new Error(`${file}: truncated`);
      return buf;
    };
    const n = Number(h.metadata.n);
    const stats: GaussianStats = { n, dim: d, mu: new Float64Array(await read(mu)), sigma: new Float64Array(await read(sigma)) };
    let features: Features | undefined;
    if (feats) {
      if (feats.dtype !== 'F32' || feats.shape.length !== 2 || feats.shape[1] !== d)
        throw new Error(`${file}: 'features' must be F32 (n, ${d})`);
      features = makeFeatures(new Float32Array(await read(feats)), feats.shape[0], d);
    }
    return { stats, features, key: h.metadata.key, file, config: JSON.parse(h.metadata.config ?? '{}') as Record<string, unknown> };
  } finally {
    await fh.close();
  }
}

export interface StatsRequest {
  cacheDir?: string;
  /** A readable prefix for the file name (dataset and feature net). */
  name: string;
  /** From fingerprintFiles (or any string that changes with the data). */
  fingerprint: string;
  /** Everything else the features depend on. */
  config: Record<string, unknown>;
  /** The features are needed too (KID, precision/recall): a cached file without them is recomputed. */
  needFeatures: boolean;
  /** Computes the reference features and their statistics on a cache miss. */
  compute: () => Promise<{ stats: GaussianStats; features: Features }>;
  /** Don't read the cache (still writes it). */
  refresh?: boolean;
  /** Told about cache hits, misses and unreadable files. */
  log?: (msg: string) => void;
}

/** The cached statistics for this dataset and configuration, computing and storing them when absent or stale. */
export async function loadOrComputeStats(req: StatsRequest): Promise<CachedStats & { cached: boolean }> {
  const dir = req.cacheDir ?? defaultStatsCacheDir();
  const key = statsKey(req.fingerprint, req.config);
  const file = statsFile(dir, req.name, key);
  const log = req.log ?? (() => {});
  if (!req.refresh && fs.existsSync(file)) {
    try {
      const c = await readStatsFile(file, key);
      if (!req.needFeatures || c.features) {
        log(`reference statistics from cache ${file}`);
        return { ...c, cached: true };
      }
      log(`cached statistics ${file} lack the features needed; recomputing`);
    } catch (e) {
      log(`ignoring unreadable cache file ${file}: ${(e as Error).message}`);
    }
  }
  const { stats, features } = await req.compute();
  try {
    await writeStatsFile(file, key, req.config, stats, features);
    log(`reference statistics written to ${file}`);
  } catch (e) {
    log(`could not write the statistics cache ${file}: ${(e as Error).message}`);
  }
  return { stats, features, key, file, config: req.config, cached: false };
}
