// The one place a checkpoint file's bytes become tensors, chosen by file
// extension: PyTorch pickles (.ckpt, .pt, .pth) through the torch checkpoint
// reader (io/torch_ckpt: its state dict, Lightning's 'state_dict' when there
// is one; no metadata), everything else as safetensors.
//
// openTensorFile lists the tensors (names, dtypes, shapes: the headers only)
// and reads them one at a time, each by its file offset into one reused
// buffer and from there into its engine tensor: a caller that moves each
// tensor where it belongs and frees it (loadLatentModel copying into the
// model's parameters) holds the file's weights once, not twice.
import path from 'node:path';

import { SafetensorsReader, readSafetensors, scratchBuffer } from './safetensors';
import { TorchCheckpointReader, findStateDict, loadTorchCheckpoint } from './torch_ckpt';
import { TORCH_DTYPE_SIZE, type TensorRef } from './torch_ckpt/tensor_ref';
import { DTYPE_SIZE, type Device, type DType } from '../tensor/native';
import { type Tensor, fromArray, numel } from '../tensor/tensor';

export const TORCH_EXTENSIONS: readonly string[] = ['.ckpt', '.pt', '.pth'];

export function isTorchFile(file: string): boolean {
  return TORCH_EXTENSIONS.includes(path.extname(file).toLowerCase());
}

/** One tensor of a checkpoint file, before its data is read. */
export interface TensorFileEntry {
  /** Its key in the file (a torch state dict's flattened name). */
  name: string;
  /** The engine dtype it loads as. */
  dtype: DType;
  shape: number[];
  /** Engine bytes once loaded. */
  bytes: number;
}

/** An open checkpoint file: its tensors listed, read on demand one at a time. */
export interface TensorFile {
  readonly file: string;
  /** In file order. */
  readonly entries: ReadonlyMap<string, TensorFileEntry>;
  /** String metadata (safetensors' __metadata__; none for torch files). */
  readonly metadata: Record<string, string>;
  /** One tensor as a fresh engine tensor; the caller owns it. Reads run one at a time. */
  read(name: string, device?: Device): Promise<Tensor>;
  close(): Promise<void>;
}

/** Serialises reads (they share one scratch buffer). */
function serial<A extends unknown[], R>(fn: (...a: A) => Promise<R>): (...a: A) => Promise<R> {
  let last: Promise<unknown> = Promise.resolve();
  return (...a) => {
    const p = last.then(() => fn(...a));
    last = p.catch(() => undefined);
    return p;
  };
}

/** Opens a checkpoint file for tensor-by-tensor reading (a torch file's state dict; see the file comment). */
export async function openTensorFile(file: string): Promise<TensorFile> {
  if (isTorchFile(file)) {
    const reader = await TorchCheckpointReader.open(file);
    try {
      const refs: Map<string, TensorRef> = findStateDict(reader).tensors;
      const entries = new Map<string, TensorFileEntry>();
      let largest = 0;
      for (const [name, ref] of refs) {
        const i = reader.info(ref, name);
        entries.set(name, { name, dtype: i.loadsAs, shape: i.shape, bytes: i.numel * DTYPE_SIZE[i.loadsAs] });
        largest = Math.max(largest, i.span * TORCH_DTYPE_SIZE[i.dtype]);
      }
      const scratch = scratchBuffer(largest);
      return {
        file, entries, metadata: {},
        read: serial(async (name: string, device: Device = 'cpu') => {
          const ref = refs.get(name);
          if (!ref) throw new RangeError(`${file}: no tensor '${name}' in the state dict`);
          const d = await reader.read(ref, name, scratch);
          return fromArray(d.data, d.shape, d.dtype, device);
        }),
        close: () => reader.close(),
      };
    } catch (e) {
      await reader.close();
      throw e;
    }
  }
  const reader = await SafetensorsReader.open(file);
  const entries = new Map<string, TensorFileEntry>();
  let largest = 0;
  for (const [name, e] of reader.header.tensors) {
    largest = Math.max(largest, e.dataOffsets[1] - e.dataOffsets[0]);
    const dtype = SAFETENSORS_LOADS_AS[e.dtype];
    entries.set(name, { name, dtype: dtype ?? 'float32', shape: [...e.shape], bytes: numel(e.shape) * DTYPE_SIZE[dtype ?? 'float32'] });
  }
  const scratch = scratchBuffer(largest);
  return {
    file, entries, metadata: { ...reader.header.metadata },
    read: serial((name: string, device: Device = 'cpu') => reader.read(name, device, scratch)),
    close: () => reader.close(),
  };
}

// (unsupported dtypes are listed as float32 and fail when read, naming the dtype)
const SAFETENSORS_LOADS_AS: Record<string, DType | undefined> = { F32: 'float32', F16: 'float16', I8: 'int8', U8: 'uint8', I32: 'int32', BOOL: 'uint8', BF16: 'float32', F64: 'float32', I64: 'int32' };

/** Every tensor of a checkpoint file and its string metadata; the caller owns the tensors. */
export async function readTensorFile(file: string): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  if (isTorchFile(file)) return { tensors: (await loadTorchCheckpoint(file)).tensors, metadata: {} };
  const { tensors, metadata } = await readSafetensors(file);
  return { tensors, metadata: metadata ?? {} };
}
