// What torch.save pickles around tensors, as inert descriptions: the storage
// types (torch.FloatStorage, ...), storages (a key, a dtype, an element count;
// where the bytes lie is filled in by the container reader), and tensors
// (_rebuild_tensor_v2 and friends: a view of a storage with an offset, sizes
// and strides). The allowlist of callables a checkpoint may "call" lives here.
import { type Callable, PyDict, PyGlobal, describeValue } from './pickle';
import type { TorchCheckpointError } from './errors';

/** Element types of torch storages. */
export type TorchDType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export const TORCH_DTYPE_SIZE: Record<TorchDType, number> = {
  float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1,
};

const STORAGE_TYPES: Record<string, TorchDType> = {
  FloatStorage: 'float32', HalfStorage: 'float16', BFloat16Storage: 'bfloat16', DoubleStorage: 'float64',
  LongStorage: 'int64', IntStorage: 'int32', ShortStorage: 'int16', CharStorage: 'int8', ByteStorage: 'uint8', BoolStorage: 'bool',
};

/** torch.FloatStorage and the like, as the pickle names them. */
export class StorageType implements Callable {
  constructor(readonly qualname: string, readonly dtype: TorchDType) {}
  call(_args: readonly unknown[], fail: (msg: string) => TorchCheckpointError): never {
    throw fail('constructing a storage directly is not supported');
  }
}

/** One storage of the checkpoint. `start` (the file offset of its bytes) is set by the container reader. */
export class StorageRef {
  start = -1;
  /** Legacy views of another storage: that storage and the element offset into it. */
  viewOf?: { key: string; offset: number };
  constructor(readonly key: string, readonly dtype: TorchDType, readonly numel: number, readonly location: string) {}
  get nbytes(): number {
    return this.numel * TORCH_DTYPE_SIZE[this.dtype];
  }
}

/** A tensor of the checkpoint: a strided view of a storage. Its data is read only when asked for. */
export class TensorRef {
  isParameter = false;
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    readonly requiresGrad: boolean,
  ) {}
  get dtype(): TorchDType {
    return this.storage.dtype;
  }
  /** Tensor state set by BUILD (tensor subclasses): ignored. */
  setState(_s: unknown): void {}
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function intList(v: unknown, what: string, fail: (msg: string) => TorchCheckpointError): number[] {
  if (!Array.isArray(v) || v.length > 64 || !v.every(isCount)) throw fail(`${what} must be a tuple of at most 64 non-negative integers, got ${describeValue(v)}`);
  return v as number[];
}

function rebuildTensor(args: readonly unknown[], fail: (msg: string) => TorchCheckpointError): TensorRef {
  const [storage, offset, size, stride, requiresGrad] = args;
  if (!(storage instanceof StorageRef)) throw fail(`expects a storage first, got ${describeValue(storage)}`);
  if (!isCount(offset)) throw fail(`storage offset must be a non-negative integer, got ${describeValue(offset)}`);
  const shape = intList(size, 'size', fail), strides = intList(stride, 'stride', fail);
  if (shape.length !== strides.length) throw fail(`size ${describeValue(size)} and stride ${describeValue(stride)} differ in length`);
  return new TensorRef(storage, offset, shape, strides, requiresGrad === true);
}

function rebuildParameter(args: readonly unknown[], fail: (msg: string) => TorchCheckpointError): TensorRef {
  const [data, requiresGrad] = args;
  if (!(data instanceof TensorRef)) throw fail(`expects a tensor, got ${describeValue(data)}`);
  const p = new TensorRef(data.storage, data.storageOffset, data.shape, data.stride, requiresGrad === true);
  p.isParameter = true;
  return p;
}

const CALLABLES: Record<string, Callable['call']> = {
  'torch._utils._rebuild_tensor_v2': rebuildTensor,
  'torch._utils._rebuild_tensor': rebuildTensor,
  'torch._utils._rebuild_parameter': rebuildParameter,
  'torch._utils._rebuild_parameter_with_state': rebuildParameter,
  'torch._tensor._rebuild_from_type_v2': (args, fail) => {
    // (func, type, args, state): a tensor subclass; rebuilt as the plain tensor
    const [fn, , inner] = args;
    if (!fn || typeof fn !== 'object' || fn instanceof PyGlobal || !('call' in fn)) throw fail(`expects an allowlisted rebuild function, got ${describeValue(fn)}`);
    if (!Array.isArray(inner)) throw fail(`expects an argument tuple, got ${describeValue(inner)}`);
    return (fn as Callable).call(inner, fail);
  },
  'torch.Size': (args, fail) => Object.freeze(intList(args[0] ?? [], 'torch.Size', fail).slice()),
  'collections.OrderedDict': (args, fail) => {
    const d = new PyDict();
    d.className = 'collections.OrderedDict';
    if (args[0] !== undefined) {
      if (!Array.isArray(args[0])) throw fail(`expects a list of pairs, got ${describeValue(args[0])}`);
      for (const p of args[0]) {
        if (!Array.isArray(p) || p.length !== 2) throw fail(`expects (key, value) pairs, got ${describeValue(p)}`);
        d.set(p[0], p[1]);
      }
    }
    return d;
  },
};

/**
 * The torch allowlist: storage types and tensor rebuild functions. Anything
 * else stays inert. Deliberately left out: torch.storage._load_from_bytes
 * (a storage pickled by plain pickle: it runs torch.load on embedded bytes;
 * torch.save never writes it for tensors it saves itself),
 * _rebuild_qtensor/_rebuild_sparse_tensor (no such tensors in the engine),
 * and numpy's reconstructors.
 */
export function findTorchGlobal(module: string, name: string): Callable | undefined {
  const q = `${module}.${name}`;
  if ((module === 'torch' || module === 'torch.cuda') && name in STORAGE_TYPES) return new StorageType(q, STORAGE_TYPES[name]);
  const c = CALLABLES[q];
  return c ? { qualname: q, call: c } : undefined;
}

/**
 * The persistent id of a storage: ('storage', storage_type, key, location, numel[, view_metadata]).
 * `storages` dedupes by key (tensors sharing a storage share one StorageRef).
 */
export function storageFromPid(pid: unknown, storages: Map<string, StorageRef>, fail: (msg: string) => TorchCheckpointError): StorageRef {
  if (!Array.isArray(pid) || pid.length < 5 || pid[0] !== 'storage') throw fail(`unsupported persistent id ${describeValue(pid)} (expected ('storage', type, key, location, numel))`);
  const [, type, key, location, numel, view] = pid;
  if (!(type instanceof StorageType)) throw fail(`unsupported storage type ${describeValue(type)}`);
  if (typeof key !== 'string' || key.length > 256) throw fail(`storage key must be a string, got ${describeValue(key)}`);
  if (!isCount(numel)) throw fail(`storage '${key}' size must be a non-negative integer, got ${describeValue(numel)}`);
  const prev = storages.get(key);
  if (prev) {
    if (prev.dtype !== type.dtype) throw fail(`storage '${key}' is used as both ${prev.dtype} and ${type.dtype}`);
    return prev;
  }
  const s = new StorageRef(key, type.dtype, numel, typeof location === 'string' ? location : 'cpu');
  if (Array.isArray(view)) {
    // legacy storage views: (view_key, offset, view_size) of the storage `key`
    const [viewKey, offset, size] = view;
    if (typeof viewKey !== 'string' || !isCount(offset) || !isCount(size)) throw fail(`bad storage view metadata ${describeValue(view)}`);
    const v = new StorageRef(viewKey, type.dtype, size, s.location);
    v.viewOf = { key, offset };
    storages.set(key, s);
    storages.set(viewKey, v);
    return v;
  }
  storages.set(key, s);
  return s;
}
