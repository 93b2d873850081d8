// Reading and writing the safetensors format:
//   8 bytes   little-endian u64 N, the header length
//   N bytes   JSON: {"__metadata__"?: {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
//   the rest  raw little-endian tensor data; offsets are relative to its start
// Our own implementation: the npm package 'safetensors' is a single unmaintained
// 0.0.1 release, and the format is small enough to validate thoroughly here.
// Both directions stream tensor by tensor through file handles, so a
// checkpoint of several GB never sits in one Buffer.
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Device, DType, TypedArray } from '../tensor/native';
import { type Tensor, fromArray, numel, runOp1, shapeToString } from '../tensor/tensor';
import { scratchBuffer } from './torch_ckpt/source';

/** Every dtype the format defines, with its element size in bytes. */
const FILE_DTYPE_SIZE: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
};

const TO_FILE: Record<DType, string> = { float32: 'F32', float16: 'F16', int8: 'I8', uint8: 'U8', int32: 'I32' };
/** File dtypes loaded as they are. BF16 and F64 become float32, I64 int32 (when in range), BOOL uint8. */
const FROM_FILE: Record<string, DType> = { F32: 'float32', F16: 'float16', I8: 'int8', U8: 'uint8', I32: 'int32', BOOL: 'uint8', BF16: 'float32', F64: 'float32', I64: 'int32' };

/** A sanity bound on the JSON header (the reference implementation uses the same 100 MB). */
const MAX_HEADER = 100_000_000;

export class SafetensorsError extends Error {
  constructor(readonly file: string, message: string, readonly key?: string) {
    super(`safetensors: ${file}${key !== undefined ? `: tensor '${key}'` : ''}: ${message}`);
    this.name = 'SafetensorsError';
  }
}

export interface SafetensorsEntry {
  /** The file's dtype name (F32, F16, BF16, ...). */
  dtype: string;
  shape: number[];
  /** [begin, end) in bytes, relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  /** Byte offset of the data section in the file (8 + header length). */
  dataStart: number;
  metadata: Record<string, string>;
  /** In the header's order. */
  tensors: Map<string, SafetensorsEntry>;
}

/**
 * A short description of a header value for error messages: bounded in length
 * and depth, so a hostile header (deeply nested, or a million-entry shape)
 * cannot blow up the message or the stack.
 */
function brief(v: unknown, depth = 0): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (Array.isArray(v)) {
    if (depth >= 2) return v.length ? '[...]' : '[]';
    return `[${v.slice(0, 8).map((x) => brief(x, depth + 1)).join(', ')}${v.length > 8 ? `, ... (${v.length} items)` : ''}]`;
  }
  if (v !== null && typeof v === 'object') return depth >= 2 ? '{...}' : `{${Object.keys(v).slice(0, 4).map((k) => JSON.stringify(k.slice(0, 20))).join(', ')}${Object.keys(v).length > 4 ? ', ...' : ''}}`;
  return String(v);
}

function isSafeNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function checkHost(file: string): void {
  if (os.endianness() !== 'LE') throw new SafetensorsError(file, 'big-endian hosts are not supported');
}

// Node refuses single reads/writes above 2 GiB; larger tensors go in pieces.
const IO_CHUNK = 1 << 30;

/** Reads exactly `length` bytes at `position` into dst (the OS may return fewer per call). */
async function readFully(fh: fsp.FileHandle, dst: Uint8Array, position: number, onShort: (got: number) => Error): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const { bytesRead } = await fh.read(dst, done, Math.min(dst.length - done, IO_CHUNK), position + done);
    if (bytesRead === 0) throw onShort(done);
    done += bytesRead;
  }
}

async function writeFully(fh: fsp.FileHandle, src: Uint8Array): Promise<void> {
  let done = 0;
  while (done < src.length) {
    const { bytesWritten } = await fh.write(src, done, Math.min(src.length - done, IO_CHUNK));
    done += bytesWritten;
  }
}

async function readHeader(fh: fsp.FileHandle, file: string): Promise<SafetensorsHeader> {
  const fileSize = (await fh.stat()).size;
  if (fileSize < 8) throw new SafetensorsError(file, `file is ${fileSize} bytes, shorter than the 8-byte header length field`);
  const lenBuf = new Uint8Array(8);
  await readFully(fh, lenBuf, 0, () => new SafetensorsError(file, 'unexpected end of file reading the header length'));
  const n = Buffer.from(lenBuf.buffer).readBigUInt64LE(0);
  if (n > BigInt(fileSize - 8))
    throw new SafetensorsError(file, `header length ${n} is larger than the rest of the file (${fileSize - 8} bytes): not a safetensors file, or truncated`);
  if (n > BigInt(MAX_HEADER)) throw new SafetensorsError(file, `header length ${n} exceeds the ${MAX_HEADER}-byte limit`);
  const headerLen = Number(n);
  const raw = new Uint8Array(headerLen);
  await readFully(fh, raw, 8, () => new SafetensorsError(file, 'unexpected end of file in the header'));
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
  } catch (e) {
    throw new SafetensorsError(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new SafetensorsError(file, 'header must be a JSON object');

  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    if (key === '__metadata__') {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new SafetensorsError(file, '__metadata__ must be an object of strings');
      for (const [mk, mv] of Object.entries(value as Record<string, unknown>)) {
        if (typeof mv !== 'string') throw new SafetensorsError(file, `__metadata__ value '${mk}' must be a string, got ${typeof mv}`);
        Object.defineProperty(metadata, mk, { value: mv, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    const bad = (msg: string) => new SafetensorsError(file, msg, key);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('entry must be an object {dtype, shape, data_offsets}');
    const { dtype, shape, data_offsets: offs } = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string' || !(dtype in FILE_DTYPE_SIZE))
      throw bad(`unknown dtype ${brief(dtype)} (the format defines ${Object.keys(FILE_DTYPE_SIZE).join(', ')})`);
    if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) throw bad(`shape must be an array of non-negative integers, got ${brief(shape)}`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isSafeNonNegInt) || offs[0] > offs[1])
      throw bad(`data_offsets must be [begin, end] with 0 <= begin <= end, got ${brief(offs)}`);
    const need = numel(shape) * FILE_DTYPE_SIZE[dtype];
    if (offs[1] - offs[0] !== need)
      throw bad(`data_offsets [${offs[0]}, ${offs[1]}] span ${offs[1] - offs[0]} bytes but shape ${shapeToString(shape)} of ${dtype} needs ${need}`);
    if (offs[1] > dataSize)
      throw bad(`data_offsets [${offs[0]}, ${offs[1]}] extend past the end of the data section (${dataSize} bytes): the file is truncated or the offsets are wrong`);
    tensors.set(key, { dtype, shape: shape as number[], dataOffsets: [offs[0], offs[1]] });
  }
  // Tensors must not share bytes (empty tensors take none).
  const spans = [...tensors].filter(([, e]) => e.dataOffsets[1] > e.dataOffsets[0]).sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
  for (let i = 1; i < spans.length; ++i) {
    const [pk, pe] = spans[i - 1], [k, e] = spans[i];
    if (e.dataOffsets[0] < pe.dataOffsets[1])
      throw new SafetensorsError(file, `data_offsets [${e.dataOffsets.join(', ')}] overlap those of '${pk}' [${pe.dataOffsets.join(', ')}]`, k);
  }
  return { file, fileSize, dataStart, metadata, tensors };
}

/** The header only: names, dtypes, shapes, offsets and metadata. */
export async function inspectSafetensors(file: string): Promise<SafetensorsHeader> {
  const fh = await fsp.open(file, 'r');
  try {
    return await readHeader(fh, file);
  } finally {
    await fh.close();
  }
}

/** Turns one tensor's raw file bytes (at offset 0 of their buffer) into engine data: a view of them where the dtype loads as it is. */
function decode(file: string, key: string, e: SafetensorsEntry, bytes: Uint8Array): { data: ArrayLike<number> | Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array; dtype: DType } {
  const n = numel(e.shape);
  const buf = bytes.buffer as ArrayBuffer;
  switch (e.dtype) {
    case 'F32':
      return { data: new Float32Array(buf, 0, n), dtype: 'float32' };
    case 'F16':
      return { data: new Uint16Array(buf, 0, n), dtype: 'float16' };
    case 'I8':
      return { data: new Int8Array(buf, 0, n), dtype: 'int8' };
    case 'U8':
    case 'BOOL':
      return { data: new Uint8Array(buf, 0, n), dtype: 'uint8' };
    case 'I32':
      return { data: new Int32Array(buf, 0, n), dtype: 'int32' };
    case 'BF16': {
      // bfloat16 is the top half of a float32
      const src = new Uint16Array(buf, 0, n), out = new Uint32Array(n);
      for (let i = 0; i < n; ++i) out[i] = src[i] << 16;
      return { data: new Float32Array(out.buffer), dtype: 'float32' };
    }
    case 'F64':
      return { data: Float32Array.from(new Float64Array(buf, 0, n)), dtype: 'float32' };
    case 'I64': {
      const src = new BigInt64Array(buf, 0, n), out = new Int32Array(n);
      for (let i = 0; i < n; ++i) {
        const v = src[i];
        if (v < -2147483648n || v > 2147483647n) throw new SafetensorsError(file, `I64 value ${v} at index ${i} does not fit int32`, key);
        out[i] = Number(v);
      }
      return { data: out, dtype: 'int32' };
    }
  }
  throw new SafetensorsError(file, `dtype ${e.dtype} is not supported (loadable: ${Object.keys(FROM_FILE).join(', ')})`, key);
}

export interface ReadSafetensorsOptions {
  /** Which tensors to load: a predicate, or a list of names (each must exist). Default: all. */
  filter?: ((name: string, entry: SafetensorsEntry) => boolean) | Iterable<string>;
  device?: Device;
}

export { scratchBuffer };

/** An open safetensors file: the validated header, and tensors read one at a time by offset. */
export class SafetensorsReader {
  private constructor(private fh: fsp.FileHandle | undefined, readonly header: SafetensorsHeader) {}

  static async open(file: string): Promise<SafetensorsReader> {
    checkHost(file);
    const fh = await fsp.open(file, 'r');
    try {
      return new SafetensorsReader(fh, await readHeader(fh, file));
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  get file(): string {
    return this.header.file;
  }

  /**
   * One tensor's data in its engine dtype. With `scratch`, the bytes are read
   * into it and the result may be a view of it: use it before the next read.
   */
  async readData(key: string, scratch?: (bytes: number) => Uint8Array): Promise<{ data: ArrayLike<number> | Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array; dtype: DType; shape: number[] }> {
    const file = this.file;
    if (!this.fh) throw new SafetensorsError(file, 'the reader is closed', key);
    const e = this.header.tensors.get(key);
    if (!e) throw new SafetensorsError(file, 'no such tensor', key);
    if (!(e.dtype in FROM_FILE)) throw new SafetensorsError(file, `dtype ${e.dtype} is not supported (loadable: ${Object.keys(FROM_FILE).join(', ')})`, key);
    const [b, end] = e.dataOffsets;
    const bytes = scratch ? scratch(end - b).subarray(0, end - b) : new Uint8Array(end - b);
    await readFully(this.fh, bytes, this.header.dataStart + b, (got) =>
      new SafetensorsError(file, `unexpected end of file: read ${got} of ${end - b} bytes (the file is truncated)`, key));
    return { ...decode(file, key, e, bytes), shape: [...e.shape] };
  }

  /** One tensor as a fresh engine tensor (the caller owns it). */
  async read(key: string, device: Device = 'cpu', scratch?: (bytes: number) => Uint8Array): Promise<Tensor> {
    const { data, dtype, shape } = await this.readData(key, scratch);
    return fromArray(data, shape, dtype, device);
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }
}

/**
 * Loads tensors one at a time (each read by its offset into one reused
 * buffer, then copied into its engine tensor; the file is never held whole).
 * F32/F16/I8/U8/I32 load as they are; BF16 and F64 become float32, I64 int32
 * (an error when a value does not fit), BOOL uint8. The header is validated
 * first; a tensor of an unsupported dtype is an error only when it is
 * selected.
 */
export async function readSafetensors(
  file: string,
  opts: ReadSafetensorsOptions = {},
): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  const reader = await SafetensorsReader.open(file);
  const tensors = new Map<string, Tensor>();
  try {
    const header = reader.header;
    let selected: [string, SafetensorsEntry][];
    const f = opts.filter;
    if (f === undefined) selected = [...header.tensors];
    else if (typeof f === 'function') selected = [...header.tensors].filter(([k, e]) => f(k, e));
    else {
      const names = [...f];
      const missing = names.filter((k) => !header.tensors.has(k));
      if (missing.length) throw new SafetensorsError(file, `no tensor named ${missing.map((k) => `'${k}'`).join(', ')}`);
      selected = names.map((k) => [k, header.tensors.get(k)!]);
    }
    const scratch = scratchBuffer();
    for (const [key] of selected) tensors.set(key, await reader.read(key, opts.device ?? 'cpu', scratch));
    return { tensors, metadata: header.metadata };
  } catch (err) {
    for (const t of tensors.values()) t.dispose();
    throw err;
  } finally {
    await reader.close();
  }
}

export interface WriteSafetensorsOptions {
  /**
   * Copy every tensor on the stream first, so ops queued after the call (an
   * optimizer step) cannot change what is written. Costs one copy of the
   * tensors in engine memory while writing. Without it, keep the tensors
   * unchanged and undisposed until the returned promise resolves.
   */
  snapshot?: boolean;
}

/** One tensor of a streamed write: its name, engine dtype and shape (the bytes come later). */
export interface SafetensorsSpec {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

/**
 * Writes tensors whose bytes are produced one at a time, in order:
 * `next(i)` gives the little-endian bytes of specs[i] (checked against its
 * dtype and shape), and is not called again before its result is written.
 * Only the header and one tensor's bytes are held. Atomic as writeSafetensors.
 */
export async function writeSafetensorsStream(
  file: string,
  specs: readonly SafetensorsSpec[],
  metadata: Record<string, string>,
  next: (i: number) => Promise<Uint8Array>,
): Promise<void> {
  checkHost(file);
  // The header is assembled from [key, value] pairs, not an object, so the
  // given order is kept and names like '__proto__' or '0' behave.
  const parts: string[] = [];
  const metaParts: string[] = [];
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') throw new TypeError(`safetensors: ${file}: metadata value '${k}' must be a string, got ${typeof v}`);
    metaParts.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
  }
  if (metaParts.length) parts.push(`"__metadata__":{${metaParts.join(',')}}`);
  const names = new Set<string>();
  const sizes: number[] = [];
  let offset = 0;
  for (const { name: k, dtype, shape } of specs) {
    if (typeof k !== 'string' || k === '' || k === '__metadata__') throw new TypeError(`safetensors: ${file}: invalid tensor name ${JSON.stringify(k)}`);
    if (names.has(k)) throw new Error(`safetensors: ${file}: tensor name '${k}' is given twice`);
    names.add(k);
    if (!(dtype in TO_FILE)) throw new TypeError(`safetensors: ${file}: tensor '${k}' has dtype ${String(dtype)}, which cannot be written`);
    const size = numel(shape) * FILE_DTYPE_SIZE[TO_FILE[dtype]];
    parts.push(`${JSON.stringify(k)}:${JSON.stringify({ dtype: TO_FILE[dtype], shape: [...shape], data_offsets: [offset, offset + size] })}`);
    sizes.push(size);
    offset += size;
  }
  // Pad the header with spaces so the data section starts 8-byte aligned.
  let json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length), 0);

  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(tmp, 'wx');
    await writeFully(fh, prefix);
    await writeFully(fh, json);
    for (let i = 0; i < specs.length; ++i) {
      const bytes = await next(i);
      if (bytes.length !== sizes[i]) throw new Error(`safetensors: ${file}: tensor '${specs[i].name}' gave ${bytes.length} bytes, expected ${sizes[i]}`);
      await writeFully(fh, bytes);
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fsp.rename(tmp, file);
  } catch (err) {
    if (fh) await fh.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
  // Make the rename itself durable (not possible on every platform: best effort).
  try {
    const d = await fsp.open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    /* directories cannot be fsynced here (e.g. Windows) */
  }
}

/**
 * Writes tensors (in the given order) and string metadata. The data is read
 * from the engine one tensor at a time, the next one while the current one is
 * written. The file appears atomically: it is written to a temporary file in
 * the same directory, fsynced, then renamed over `file`.
 */
export async function writeSafetensors(
  file: string,
  tensors: Map<string, Tensor> | [string, Tensor][],
  metadata: Record<string, string> = {},
  opts: WriteSafetensorsOptions = {},
): Promise<void> {
  checkHost(file);
  const entries = tensors instanceof Map ? [...tensors] : [...tensors];
  for (const [k, t] of entries) {
    if (!t || (t as { isTensor?: boolean }).isTensor !== true) throw new TypeError(`safetensors: ${file}: tensor '${k}' is not a Tensor`);
    if (t.disposed) throw new TypeError(`safetensors: ${file}: tensor '${k}' has been disposed`);
  }
  const specs = entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
  const sources = opts.snapshot ? entries.map(([k, t]) => [k, runOp1('cast', [t], { dtype: t.dtype })] as [string, Tensor]) : entries;
  const pending: (Promise<TypedArray> | undefined)[] = [];
  const fetch = (i: number) => {
    if (i >= sources.length || pending[i]) return;
    const p = sources[i][1].data();
    p.catch(() => undefined); // awaited in next(); avoid an unhandled rejection if we stop early
    pending[i] = p;
  };
  try {
    await writeSafetensorsStream(file, specs, metadata, async (i) => {
      fetch(i);
      const data = await pending[i]!;
      pending[i] = undefined;
      fetch(i + 1); // the next tensor is read from the engine while this one is written
      if (opts.snapshot) sources[i][1].dispose();
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    });
  } finally {
    if (opts.snapshot) for (const [, t] of sources) t.dispose();
  }
}
