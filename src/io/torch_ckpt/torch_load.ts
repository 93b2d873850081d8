// Reading PyTorch checkpoints (.ckpt/.pt/.pth as torch.save writes them, zip
// or legacy) without executing anything: the pickle is read by the safe
// unpickler against an allowlist, storages are located in the file by offset,
// and each tensor's bytes are read (only its own span) when it is loaded,
// then materialised contiguous and converted to an engine dtype the way
// readSafetensors does: float32/float16/int8/uint8/int32 as they are,
// bfloat16 and float64 to float32, int64 and int16 to int32 (int64 values
// must fit), bool to uint8.
import { promises as fsp } from 'node:fs';
import os from 'node:os';

import type { Device, DType, TypedArray } from '../../tensor/native';
import { type Tensor, fromArray } from '../../tensor/tensor';
import { TorchCheckpointError } from './errors';
import { readLegacy } from './legacy';
import { type PickleLimits, PyDict, PyObject, Unpickler, describeValue } from './pickle';
import { FileSource, readAt, scratchBuffer } from './source';
import { type StorageRef, TORCH_DTYPE_SIZE, type TorchDType, TensorRef, findTorchGlobal, storageFromPid } from './tensor_ref';
import { ZipArchive } from './zip';

export interface TorchTensorInfo {
  /** The dtype in the file. */
  dtype: TorchDType;
  /** The engine dtype it loads as. */
  loadsAs: DType;
  shape: number[];
  stride: number[];
  storageOffset: number;
  storageKey: string;
  requiresGrad: boolean;
}

export interface OpenTorchOptions extends PickleLimits {
  /** A call of anything off the allowlist is an error naming it (default: an inert object and a note). */
  strict?: boolean;
  /** Tensors may have more elements than their storage span (expand()) only up to this many (default 2^24). */
  maxExpandedElements?: number;
  /** Nesting of dicts walked to find tensors (default 64). */
  maxDepth?: number;
}

export interface LoadTorchOptions extends OpenTorchOptions {
  /**
   * Which dict is the state dict: 'auto' (default: root['state_dict'] when the
   * root is a dict holding one, as Lightning writes, else the root), 'root',
   * or a key of the root dict.
   */
  stateDict?: string;
  /** Which tensors to load, by their flattened name. Default all. */
  filter?: (name: string, info: TorchTensorInfo) => boolean;
  device?: Device;
}

const ENGINE_DTYPE: Record<TorchDType, DType> = {
  float32: 'float32', float16: 'float16', bfloat16: 'float32', float64: 'float32',
  int64: 'int32', int32: 'int32', int16: 'int32', int8: 'int8', uint8: 'uint8', bool: 'uint8',
};

/** Raw data of one tensor, contiguous, in its engine dtype. */
export interface TensorData {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

function gather(bytes: Uint8Array, es: number, shape: readonly number[], stride: readonly number[], n: number): Uint8Array {
  const out = new Uint8Array(n * es);
  const Ctor = es === 1 ? Uint8Array : es === 2 ? Uint16Array : es === 4 ? Uint32Array : BigUint64Array;
  const src = new Ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.length / es) as unknown as { [i: number]: number | bigint };
  const dst = new Ctor(out.buffer) as unknown as { [i: number]: number | bigint };
  const d = shape.length;
  if (d === 0) {
    dst[0] = src[0];
    return out;
  }
  const idx = new Array<number>(d).fill(0);
  const last = shape[d - 1], ls = stride[d - 1];
  let base = 0;
  for (let o = 0; o < n; o += last) {
    for (let j = 0; j < last; ++j) dst[o + j] = src[base + j * ls];
    // advance the outer dims
    for (let k = d - 2; k >= 0; --k) {
      idx[k] += 1;
      base += stride[k];
      if (idx[k] < shape[k]) break;
      base -= stride[k] * shape[k];
      idx[k] = 0;
    }
  }
  return out;
}

function convert(file: string, name: string, dtype: TorchDType, bytes: Uint8Array, n: number): { dtype: DType; data: TypedArray } {
  const buf = bytes.buffer as ArrayBuffer, o = bytes.byteOffset;
  switch (dtype) {
    case 'float32': return { dtype: 'float32', data: new Float32Array(buf, o, n) };
    case 'float16': return { dtype: 'float16', data: new Uint16Array(buf, o, n) };
    case 'int8': return { dtype: 'int8', data: new Int8Array(buf, o, n) };
    case 'uint8': case 'bool': return { dtype: 'uint8', data: new Uint8Array(buf, o, n) };
    case 'int32': return { dtype: 'int32', data: new Int32Array(buf, o, n) };
    case 'int16': return { dtype: 'int32', data: Int32Array.from(new Int16Array(buf, o, n)) };
    case 'float64': return { dtype: 'float32', data: Float32Array.from(new Float64Array(buf, o, n)) };
    case 'bfloat16': {
      const src = new Uint16Array(buf, o, n), out = new Uint32Array(n);
      for (let i = 0; i < n; ++i) out[i] = src[i] << 16;
      return { dtype: 'float32', data: new Float32Array(out.buffer) };
    }
    case 'int64': {
      const src = new BigInt64Array(buf, o, n), out = new Int32Array(n);
      for (let i = 0; i < n; ++i) {
        const v = src[i];
        if (v < -2147483648n || v > 2147483647n) throw new TorchCheckpointError(file, `int64 value ${v} at index ${i} does not fit int32`, name);
        out[i] = Number(v);
      }
      return { dtype: 'int32', data: out };
    }
  }
}

/**
 * Which torch.save format a file is in, from its first bytes: 'zip' (a zip
 * archive), 'legacy' (a pickle), or undefined (neither: safetensors, or not
 * a checkpoint). Cheap: for choosing a reader.
 */
export async function detectTorchFormat(file: string): Promise<'zip' | 'legacy' | undefined> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    if (bytesRead === 4 && b.readUInt32LE(0) === 0x04034b50) return 'zip';
    if (bytesRead >= 2 && b[0] === 0x80 && b[1] >= 2 && b[1] <= 5) return 'legacy';
    return undefined;
  } finally {
    await fh.close();
  }
}

/** An open checkpoint: the unpickled object (tensors as TensorRef), and tensor data on demand. */
export class TorchCheckpointReader {
  readonly notes: string[] = [];

  private constructor(
    readonly file: string,
    readonly format: 'zip' | 'legacy',
    readonly root: unknown,
    readonly storages: Map<string, StorageRef>,
    private fh: fsp.FileHandle | undefined,
    readonly opts: OpenTorchOptions,
    noteCounts: Map<string, number>,
  ) {
    for (const [m, c] of noteCounts) this.notes.push(c > 1 ? `${m} (${c} times)` : m);
  }

  static async open(file: string, opts: OpenTorchOptions = {}): Promise<TorchCheckpointReader> {
    if (os.endianness() !== 'LE') throw new TorchCheckpointError(file, 'big-endian hosts are not supported');
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      throw new TorchCheckpointError(file, `cannot open: ${(e as Error).message}`);
    }
    try {
      const size = (await fh.stat()).size;
      const head = Buffer.alloc(Math.min(size, 512));
      await readAt(fh, file, head, 0, 'the file header');
      const storages = new Map<string, StorageRef>();
      const counts = new Map<string, number>();
      const pickleOpts = { ...opts, note: (m: string) => counts.set(m, (counts.get(m) ?? 0) + 1) };
      let root: unknown, format: 'zip' | 'legacy';
      if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) {
        format = 'zip';
        root = readZip(fh.fd, file, size, storages, pickleOpts);
      } else if (head.length >= 2 && head[0] === 0x80 && head[1] <= 5) {
        format = 'legacy';
        root = readLegacy(fh.fd, file, size, storages, pickleOpts);
      } else if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') {
        throw new TorchCheckpointError(file, 'a tar-format checkpoint (PyTorch < 0.4) is not supported; re-save it with a newer torch');
      } else {
        throw new TorchCheckpointError(file, `not a PyTorch checkpoint (starts with ${head.subarray(0, 4).toString('hex') || 'nothing'}; expected a zip archive or a pickle)`);
      }
      return new TorchCheckpointReader(file, format, root, storages, fh, opts, counts);
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  /** Facts about a tensor, checked against its storage (the data is not read). */
  info(ref: TensorRef, name: string): TorchTensorInfo & { numel: number; span: number } {
    const s = ref.storage;
    const bad = (msg: string) => new TorchCheckpointError(this.file, msg, name);
    let numel = 1;
    for (const d of ref.shape) {
      numel *= d;
      if (numel > 0x7fffffff) throw bad(`shape [${ref.shape.join(', ')}] has more than 2^31 - 1 elements`);
    }
    let span = 0;
    if (numel > 0) {
      let maxIdx = ref.storageOffset;
      for (let i = 0; i < ref.shape.length; ++i) maxIdx += (ref.shape[i] - 1) * ref.stride[i];
      if (maxIdx >= s.numel)
        throw bad(`shape [${ref.shape.join(', ')}], stride [${ref.stride.join(', ')}] at offset ${ref.storageOffset} reach element ${maxIdx} of storage '${s.key}', which has ${s.numel}`);
      span = maxIdx - ref.storageOffset + 1;
      const maxExpanded = this.opts.maxExpandedElements ?? 2 ** 24;
      if (numel > span && numel > maxExpanded)
        throw bad(`${numel} elements over a storage span of ${span} (an expanded view) exceeds the ${maxExpanded}-element limit`);
    }
    return {
      dtype: s.dtype, loadsAs: ENGINE_DTYPE[s.dtype], shape: [...ref.shape], stride: [...ref.stride],
      storageOffset: ref.storageOffset, storageKey: s.key, requiresGrad: ref.requiresGrad, numel, span,
    };
  }

  /**
   * One tensor's data: its span of the storage read from the file, made
   * contiguous, converted. With `scratch` (a buffer at least as long as the
   * span's bytes, which reuse avoids allocating per tensor), the span is read
   * into it, and the result may be a view of it: use the data before the
   * scratch is read into again.
   */
  async read(ref: TensorRef, name: string, scratch?: (bytes: number) => Uint8Array): Promise<TensorData> {
    if (!this.fh) throw new TorchCheckpointError(this.file, 'the reader is closed', name);
    const { numel, span } = this.info(ref, name);
    const s = ref.storage, es = TORCH_DTYPE_SIZE[s.dtype];
    if (numel > 0 && s.start < 0) throw new TorchCheckpointError(this.file, `storage '${s.key}' has no data in the file`, name);
    const bytes = scratch ? scratch(span * es).subarray(0, span * es) : new Uint8Array(span * es);
    if (numel > 0) await readAt(this.fh, this.file, bytes, s.start + ref.storageOffset * es, `tensor '${name}'`);
    let contiguous = numel === span;
    for (let i = ref.shape.length - 1, want = 1; i >= 0 && contiguous; --i) {
      if (ref.shape[i] !== 1 && ref.stride[i] !== want) contiguous = false;
      want *= ref.shape[i];
    }
    const dense = numel === 0 || contiguous ? bytes : gather(bytes, es, ref.shape, ref.stride, numel);
    const { dtype, data } = convert(this.file, name, s.dtype, dense, numel);
    return { dtype, shape: [...ref.shape], data };
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }
}

function readZip(fd: number, file: string, size: number, storages: Map<string, StorageRef>, opts: Parameters<typeof readLegacy>[4]): unknown {
  const zip = ZipArchive.open(fd, file, size);
  const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkls.length !== 1)
    throw new TorchCheckpointError(file, pkls.length ? `the archive holds ${pkls.length} data.pkl records` : 'a zip archive without <name>/data.pkl: not a torch.save checkpoint');
  const prefix = pkls[0].slice(0, -'data.pkl'.length);
  const bo = zip.entries.get(`${prefix}byteorder`);
  if (bo) {
    const r = zip.dataRange(bo.name);
    const b = new FileSource(fd, file, r.start, r.start + r.size, 'byteorder');
    const order = Buffer.from(b.bytes(Math.min(r.size, 16))).toString('latin1');
    if (order !== 'little') throw new TorchCheckpointError(file, `byteorder is ${JSON.stringify(order)}; only little-endian checkpoints are supported`);
  }
  const r = zip.dataRange(pkls[0]);
  const root = new Unpickler(new FileSource(fd, file, r.start, r.start + r.size, pkls[0]), {
    ...opts, file, what: pkls[0],
    findGlobal: findTorchGlobal,
    persistentLoad: (pid, fail) => storageFromPid(pid, storages, fail),
  }).load();
  for (const s of storages.values()) {
    const name = `${prefix}data/${s.key}`;
    const d = zip.dataRange(name);
    if (d.size < s.nbytes) throw new TorchCheckpointError(file, `storage of ${s.numel} ${s.dtype} needs ${s.nbytes} bytes, the entry has ${d.size}`, name);
    s.start = d.start;
  }
  return root;
}

/** Where the state dict is in the unpickled object, and its tensors by flattened name. */
export function findStateDict(reader: TorchCheckpointReader, which = 'auto'): { key: string | undefined; tensors: Map<string, TensorRef>; dropped: string[] } {
  const root = reader.root;
  let dict: unknown = root, key: string | undefined;
  if (which === 'auto') {
    if (root instanceof PyDict && root.get('state_dict') instanceof PyDict) {
      dict = root.get('state_dict');
      key = 'state_dict';
    }
  } else if (which !== 'root') {
    if (!(root instanceof PyDict) || !root.has(which)) throw new TorchCheckpointError(reader.file, `the checkpoint has no top-level key '${which}'`);
    dict = root.get(which);
    key = which;
  }
  const tensors = new Map<string, TensorRef>(), dropped: string[] = [];
  if (dict instanceof PyObject && moduleState(dict)) {
    // torch.save(model): a pickled nn.Module tree, read as its state_dict() would be
    walkModule(reader, dict, '', 0, tensors, dropped);
    return { key, tensors, dropped };
  }
  if (dict instanceof TensorRef) {
    tensors.set('', dict);
    return { key, tensors, dropped };
  }
  if (!(dict instanceof PyDict)) throw new TorchCheckpointError(reader.file, `the checkpoint${key ? `'s '${key}'` : ''} is ${describeValue(dict)}, not a dict of tensors`);
  const maxDepth = reader.opts.maxDepth ?? 64;
  const walk = (d: PyDict, prefix: string, depth: number, seen: Set<unknown>): void => {
    if (depth > maxDepth) throw new TorchCheckpointError(reader.file, `dicts nested deeper than ${maxDepth}`, prefix.slice(0, 200));
    seen.add(d);
    for (const [k, v] of d) {
      const name = `${prefix}${typeof k === 'string' ? k : describeValue(k)}`;
      if (v instanceof TensorRef) {
        if (tensors.has(name)) throw new TorchCheckpointError(reader.file, 'two tensors have this flattened name', name);
        tensors.set(name, v);
      } else if (v instanceof PyDict && !seen.has(v) && [...v.values()].some((x) => x instanceof TensorRef || x instanceof PyDict)) walk(v, `${name}.`, depth + 1, seen);
      else dropped.push(`${name}: ${describeValue(v)}`);
    }
  };
  walk(dict, '', 0, new Set());
  return { key, tensors, dropped };
}

/** The __dict__ of a pickled nn.Module (it has _parameters, _buffers and _modules), else undefined. */
function moduleState(o: PyObject): PyDict | undefined {
  const st = o.state;
  return st instanceof PyDict && st.get('_parameters') instanceof PyDict && st.get('_modules') instanceof PyDict ? st : undefined;
}

/** A module's parameters, persistent buffers and submodules' state, named as state_dict() names them. */
function walkModule(reader: TorchCheckpointReader, m: PyObject, prefix: string, depth: number, tensors: Map<string, TensorRef>, dropped: string[]): void {
  const maxDepth = reader.opts.maxDepth ?? 64;
  if (depth > maxDepth) throw new TorchCheckpointError(reader.file, `modules nested deeper than ${maxDepth}`, prefix.slice(0, 200));
  const st = moduleState(m)!;
  const nonPersistent = st.get('_non_persistent_buffers_set');
  const skip = nonPersistent instanceof Set ? nonPersistent : new Set();
  const add = (d: unknown, buffers: boolean) => {
    if (!(d instanceof PyDict)) return;
    for (const [k, v] of d) {
      const name = `${prefix}${String(k)}`;
      if (v === null || (buffers && skip.has(k))) continue;
      if (!(v instanceof TensorRef)) dropped.push(`${name}: ${describeValue(v)}`);
      else if (tensors.has(name)) throw new TorchCheckpointError(reader.file, 'two tensors have this name', name);
      else tensors.set(name, v);
    }
  };
  add(st.get('_parameters'), false);
  add(st.get('_buffers'), true);
  for (const [k, sub] of st.get('_modules') as PyDict) {
    if (sub instanceof PyObject && moduleState(sub)) walkModule(reader, sub, `${prefix}${String(k)}.`, depth + 1, tensors, dropped);
    else if (sub !== null) dropped.push(`${prefix}${String(k)}: ${describeValue(sub)}`);
  }
}

/** Tensors anywhere in the object (visited without recursion, each container once). */
export function countTensors(root: unknown, limit = 10_000_000): number {
  let n = 0;
  const seen = new Set<unknown>(), todo: unknown[] = [root];
  while (todo.length && seen.size < limit) {
    const v = todo.pop();
    if (v instanceof TensorRef) ++n;
    if (v === null || typeof v !== 'object' || seen.has(v) || v instanceof Uint8Array) continue;
    seen.add(v);
    // (no spreading: a list may have millions of items)
    if (v instanceof Map) for (const [k, x] of v) todo.push(k, x);
    else if (v instanceof Set || Array.isArray(v)) for (const x of v) todo.push(x);
    else if (v instanceof PyObject) {
      todo.push(v.state);
      for (const x of v.args) todo.push(x);
      for (const x of v.listItems) todo.push(x);
      for (const [k, x] of v.dictItems) todo.push(k, x);
    }
  }
  return n;
}

export interface TorchCheckpoint {
  file: string;
  format: 'zip' | 'legacy';
  /** The whole unpickled object; tensors in it are TensorRef descriptions, everything else inert values. */
  root: unknown;
  /** The root key the state dict came from ('state_dict' for Lightning), or undefined for the root itself. */
  stateDictKey: string | undefined;
  /** The state dict's tensors (nested dicts flattened with '.'), in file order, loaded. */
  tensors: Map<string, Tensor>;
  info: Map<string, TorchTensorInfo>;
  /** Non-tensor entries of the state dict ("name: what"), not loaded. */
  dropped: string[];
  /** Tensors elsewhere in the object (optimizer states, callbacks), not loaded. */
  otherTensors: number;
  /** Calls not made, and the like. */
  notes: string[];
  /** Disposes every loaded tensor. */
  dispose(): void;
}

/**
 * Loads the state dict of a torch.save checkpoint as engine tensors, one
 * tensor at a time from the file. Nothing in the file is ever executed.
 */
export async function loadTorchCheckpoint(file: string, opts: LoadTorchOptions = {}): Promise<TorchCheckpoint> {
  const reader = await TorchCheckpointReader.open(file, opts);
  const tensors = new Map<string, Tensor>();
  const info = new Map<string, TorchTensorInfo>();
  try {
    const sd = findStateDict(reader, opts.stateDict);
    const scratch = scratchBuffer();
    for (const [name, ref] of sd.tensors) {
      const { numel: _n, span: _s, ...i } = reader.info(ref, name);
      if (opts.filter && !opts.filter(name, i)) continue;
      const d = await reader.read(ref, name, scratch);
      tensors.set(name, fromArray(d.data, d.shape, d.dtype, opts.device ?? 'cpu'));
      info.set(name, i);
    }
    const otherTensors = countTensors(reader.root) - sd.tensors.size;
    return {
      file, format: reader.format, root: reader.root, stateDictKey: sd.key, tensors, info, dropped: sd.dropped, otherTensors, notes: reader.notes,
      dispose: () => {
        for (const t of tensors.values()) t.dispose();
        tensors.clear();
      },
    };
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  } finally {
    await reader.close();
  }
}
