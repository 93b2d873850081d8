// Loads the native addon (built at install by cmake-js or node-gyp) once per
// JS environment. The addon keeps per-environment state, so worker_threads
// each get their own stream and thread pool.
import path from 'node:path';

export type DType = 'float32' | 'float16' | 'int8' | 'uint8' | 'int32';
export type Device = 'cpu' | 'cuda';
export type AttrValue = number | boolean | string | number[];
export type Attrs = Record<string, AttrValue | undefined>;

export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: DType;
  readonly device: Device;
  readonly nbytes: number;
  readonly disposed: boolean;
  dispose(): void;
  read(): Promise<TypedArray>;
  readSync(): TypedArray;
}

export type TypedArray = Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array;

export interface OpInfo {
  name: string;
  cpu: boolean;
  cuda: boolean;
}

export interface EngineInfo {
  cpuFeatures: Record<string, boolean>;
  cpuLevel: 'scalar' | 'avx2' | 'avx512';
  bestCpuLevel: 'scalar' | 'avx2' | 'avx512';
  /** The integer GEMM kernel at cpuLevel: 'scalar', 'avx2' or 'avx512-vnni' (avx512 without VNNI runs 'avx2'). */
  int8Kernel: string;
  threads: number;
  maxQueuedBytes: number;
  ops: OpInfo[];
  cuda: { built: boolean; available: boolean; reason: string; /** the CUDA library's build (CUDA version, architectures, cuBLAS/cuDNN); '' when not built */ buildInfo?: string;
    /** Only when available: what was loaded of cuBLAS / cuDNN (or why not), one line. */
    libraries?: string;
    /** Only when available: the library's options (kernels, precision, int8). */
    options?: { kernels: string; precision: string; int8: string } };
  /** Built with MPI (data-parallel ranks). */
  mpi: boolean;
}

export interface NativeBinding {
  fromData(data: TypedArray, shape: readonly number[], dtype: DType, device?: Device): NativeTensor;
  run(op: string, inputs: (NativeTensor | null)[], attrs?: Attrs): NativeTensor[];
  view(t: NativeTensor, shape: readonly number[]): NativeTensor;
  /** Resolves when every op queued so far has run. Never rejects: a failed op's error is its outputs'. */
  sync(): Promise<void>;
  syncBlocking(): void;
  info(): EngineInfo;
  /** liveBytes, peakBytes: this environment's tensors; cachedBytes: freed large host buffers kept for reuse (process-wide). */
  memory(): { liveBytes: number; peakBytes: number; cachedBytes: number };
  resetPeakMemory(): void;
  /**
   * The CUDA backend's memory: bytes of live tensors, of the allocator's
   * cache, and the device's free / total; null unless a device works (it
   * loads the backend when not yet loaded: call it after choosing 'cuda').
   */
  cudaMemory(): { allocated: number; cached: number; deviceFree: number; deviceTotal: number } | null;
  /** The CUDA library's run-time options (kernels, precision, int8); TypeError when no device works, RangeError for a bad key or value. */
  cudaSetOption(key: 'kernels' | 'precision' | 'int8', value: string): void;
  cudaGetOption(key: 'kernels' | 'precision' | 'int8' | 'libraries'): string;
  setThreads(n: number): void;
  setCpuLevel(level: 'scalar' | 'avx2' | 'avx512'): void;
  setSynchronous(on: boolean): void;
  /**
   * Obsolete, kept for compatibility: validated and reported by info(), no
   * effect. Queuing an op never waits: outputs are allocated by the engine's
   * thread when the op runs, so ops queued ahead hold no output memory.
   */
  setMaxQueuedBytes(bytes: number): void;
  /**
   * Caps the cache of freed large host buffers (default 2048 MiB, or
   * TDQ_HOST_CACHE_MB), unmapping what is over the cap. 0: no cache.
   */
  setHostCacheBytes(bytes: number): void;
  /** Gives every cached host buffer back to the system; returns the bytes released. */
  releaseHostCache(): number;
  /** Starts (or stops) timing every op on the stream thread; clears the totals. */
  setProfiling(on: boolean): void;
  /** Seconds and calls per op since setProfiling(true) (waits for queued ops). */
  profile(): Record<string, { calls: number; seconds: number }>;
}

let binding: NativeBinding | undefined;

/** The package root: this file lives in dist/src/tensor/. */
export const packageRoot = path.resolve(__dirname, '..', '..', '..');

export function native(): NativeBinding {
  if (binding) return binding;
  const override = process.env.TDQ_ADDON_PATH;
  const tried = override ? override : `${path.join(packageRoot, 'build', 'Release')} (node-gyp-build)`;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    binding = (override ? require(path.resolve(override)) : require('node-gyp-build')(packageRoot)) as NativeBinding;
  } catch (e) {
    // The addon loaded but refused a TDQ_* environment variable (native/core/env.h).
    if (/^TDQ_[A-Z_]+=/.test((e as Error).message)) throw e;
    throw new Error(
      `tdq-native: could not load the native addon (tried ${tried}): ${(e as Error).message}\n` +
        `Build it with 'npm run build:native' in ${packageRoot} (needs a C++17 compiler and cmake >= 3.19, ` +
        `or python3 and make for node-gyp), or point TDQ_ADDON_PATH at a built tdq_native.node.`,
    );
  }
  return binding;
}

/** Dtypes and the typed arrays that hold them (float16 as raw Uint16 bits). */
export const TYPED_ARRAYS = {
  float32: Float32Array,
  float16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int32: Int32Array,
} as const;

export const DTYPE_SIZE: Record<DType, number> = { float32: 4, float16: 2, int8: 1, uint8: 1, int32: 4 };
