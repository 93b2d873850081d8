// Choosing the device: 'cpu', 'cuda' or 'auto'. Whether CUDA works is asked
// of a child process (it loads the addon and libtdq_cuda.so, creates a
// context and runs one kernel, under a timeout), so a broken driver or a hung
// device costs the probe, never this process. The verdict is kept for the
// process and in a small cache file keyed by what could change it (the
// library, the driver, the boot, the TDQ_CUDA_* / CUDA_VISIBLE_DEVICES
// environment); TDQ_CUDA_PROBE_CACHE=0 turns the file off.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type Device, native, packageRoot } from './native';

export type DeviceSpec = Device | 'auto';
export const DEVICE_SPECS: readonly DeviceSpec[] = ['auto', 'cuda', 'cpu'];

/** 'cuda' was asked for and cannot be used: what was tried, why not, and how to fix it. */
export class DeviceUnavailableError extends TypeError {
  constructor(readonly reason: string, readonly tried: string, readonly fix: string) {
    super(`device 'cuda' is not available: ${reason}\n  tried: ${tried}\n  fix: ${fix}; or use --device cpu (device: 'cpu'), or --device auto to fall back to the CPU`);
    this.name = 'DeviceUnavailableError';
  }
}

export interface CudaProbe {
  available: boolean;
  /** '' when available; else why not, in words. */
  reason: string;
  /** What was tried, for messages. */
  tried: string;
  /** From the cache file or this process's earlier probe. */
  cached: boolean;
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** Part of the cache key: bump when the probe or the verdict's wording changes. */
const CACHE_FORMAT = 'probe-2';

/** Where libtdq_cuda.so is looked for (the loader's rule: TDQ_CUDA_LIB, else next to the addon). */
export function cudaLibraryPath(): string {
  if (process.env.TDQ_CUDA_LIB) return process.env.TDQ_CUDA_LIB;
  const addonDir = process.env.TDQ_ADDON_PATH ? path.dirname(path.resolve(process.env.TDQ_ADDON_PATH)) : path.join(packageRoot, 'build', 'Release');
  return path.join(addonDir, 'libtdq_cuda.so');
}

function readOr(file: string, fallback = ''): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n')[0];
  } catch {
    return fallback;
  }
}

function statKey(file: string): string {
  try {
    const s = fs.statSync(file);
    return `${s.size}:${s.mtimeMs}`;
  } catch {
    return 'absent';
  }
}

/** Everything the verdict depends on, hashed: a change of any means a new probe. */
function cacheKey(): string {
  const lib = cudaLibraryPath();
  const parts = [
    CACHE_FORMAT, process.execPath, process.version, packageRoot, lib, statKey(lib),
    process.env.TDQ_ADDON_PATH ?? '', statKey(process.env.TDQ_ADDON_PATH ?? path.join(packageRoot, 'build', 'Release', 'tdq_native.node')),
    process.env.TDQ_CUDA_DISABLE ?? '', process.env.CUDA_VISIBLE_DEVICES ?? '<unset>',
    readOr('/proc/sys/kernel/random/boot_id'), readOr('/proc/driver/nvidia/version', 'no-driver-file'),
  ];
  return crypto.createHash('sha256').update(parts.join('\n')).digest('hex').slice(0, 32);
}

function cacheFile(): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 'u';
  return path.join(os.tmpdir(), `tdq-native-${uid}`, 'cuda-probe.json');
}

// The child: the addon's own view (library, driver, device probe), then a
// context in earnest: a tensor up, one kernel, the values back.
const CHILD = `
const out = (o) => process.stdout.write(JSON.stringify(o));
let native;
try { native = require(process.argv[1]).native(); } catch (e) { out({ available: false, reason: 'the addon could not be loaded: ' + e.message }); process.exit(0); }
const c = native.info().cuda;
if (!c.available) { out({ available: false, reason: c.reason }); process.exit(0); }
try {
  const a = native.fromData(new Float32Array([1, 2, 3]), [3], 'float32', 'cuda');
  const [b] = native.run('add', [a, a]);
  const v = Array.from(b.readSync());
  if (v.join() !== '2,4,6') { out({ available: false, reason: 'a test kernel on the device computed ' + v.join() + ' for 2,4,6' }); process.exit(0); }
  out({ available: true, reason: '' });
} catch (e) { out({ available: false, reason: 'the device failed a test kernel: ' + e.message }); }
`;

let memo: CudaProbe | undefined;

/**
 * Whether CUDA works here, asked of a child process (timeout
 * TDQ_CUDA_PROBE_TIMEOUT_MS, default 30 s). Cached; refresh: probe again.
 */
export function probeCuda(opts: { refresh?: boolean } = {}): CudaProbe {
  if (memo && !opts.refresh) return { ...memo, cached: true };
  const useFile = process.env.TDQ_CUDA_PROBE_CACHE !== '0';
  const key = cacheKey();
  const file = cacheFile();
  const timeoutMs = Number(process.env.TDQ_CUDA_PROBE_TIMEOUT_MS ?? DEFAULT_TIMEOUT_MS);
  const tried = `a child process (timeout ${timeoutMs} ms) tried to load ${cudaLibraryPath()} and the NVIDIA driver (libcuda.so.1), create a context and run one kernel`;
  if (useFile && !opts.refresh) {
    try {
      const c = JSON.parse(fs.readFileSync(file, 'utf8')) as { key: string; available: boolean; reason: string };
      if (c.key === key && typeof c.available === 'boolean' && typeof c.reason === 'string') {
        memo = { available: c.available, reason: c.reason, tried, cached: true };
        return memo;
      }
    } catch {
      // no cache yet, or unreadable: probe
    }
  }
  const r = spawnSync(process.execPath, ['-e', CHILD, path.join(__dirname, 'native.js')], { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL' });
  let verdict: { available: boolean; reason: string };
  let keep = true;
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') {
    verdict = { available: false, reason: `the probe did not finish in ${timeoutMs} ms (a hung driver or device?)` };
    keep = false; // may be transient: ask again next time
  } else if (r.error) {
    verdict = { available: false, reason: `the probe process could not run: ${r.error.message}` };
    keep = false;
  } else if (r.signal) {
    verdict = { available: false, reason: `the probe process died (${r.signal}) while loading CUDA${r.stderr ? `: ${r.stderr.trim().split('\n').slice(-1)[0]}` : ''}` };
  } else {
    try {
      verdict = JSON.parse(r.stdout) as { available: boolean; reason: string };
    } catch {
      verdict = { available: false, reason: `the probe process exited ${r.status} without a verdict${r.stderr ? `: ${r.stderr.trim().split('\n').slice(-1)[0]}` : ''}` };
    }
  }
  memo = { available: verdict.available, reason: verdict.reason, tried, cached: false };
  if (useFile && keep) {
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      const tmp = `${file}.${process.pid}`;
      fs.writeFileSync(tmp, JSON.stringify({ key, ...verdict }));
      fs.renameSync(tmp, file);
    } catch {
      // a read-only tmpdir: the in-process memo still holds
    }
  }
  return memo;
}

/** How to fix what `reason` says. */
function fixFor(reason: string): string {
  if (/TDQ_CUDA_DISABLE/.test(reason)) return 'unset TDQ_CUDA_DISABLE';
  if (/no CUDA backend|could not be loaded:/.test(reason) && !/libcuda/.test(reason))
    return "build the CUDA backend: install the CUDA toolkit (nvcc) and run 'npm run build:native' (or point TDQ_CUDA_LIB at a built libtdq_cuda.so)";
  if (/driver/i.test(reason) && /no NVIDIA driver|libcuda/.test(reason)) return 'run on a machine with an NVIDIA GPU and its driver installed (nvidia-smi should list the GPU)';
  if (/insufficient/.test(reason)) return 'update the NVIDIA driver to one that supports CUDA 13';
  if (/does not match this addon/.test(reason)) return "rebuild with 'npm run build:native'";
  if (/did not finish/.test(reason)) return 'check the GPU with nvidia-smi (a hung device needs a reset by its administrator), then retry';
  return 'check nvidia-smi and CUDA_VISIBLE_DEVICES';
}

export function parseDeviceSpec(s: string): DeviceSpec {
  if ((DEVICE_SPECS as readonly string[]).includes(s)) return s as DeviceSpec;
  throw new TypeError(`device '${s}': expected one of ${DEVICE_SPECS.join(', ')}`);
}

/**
 * The device to run on. 'cpu' is taken as is (nothing CUDA is touched);
 * 'cuda' throws DeviceUnavailableError unless the probe passes; 'auto' is
 * cuda when the probe passes, else cpu, with the reason given to `log`.
 */
export function resolveDevice(spec: DeviceSpec | undefined = 'cpu', log?: (line: string) => void): Device {
  if (spec === 'cpu') return 'cpu';
  if (spec !== 'cuda' && spec !== 'auto') parseDeviceSpec(spec);
  const p = probeCuda();
  if (p.available) {
    log?.(`device: cuda (${spec === 'auto' ? 'auto: ' : ''}probe passed${p.cached ? ', cached' : ''})`);
    return 'cuda';
  }
  if (spec === 'cuda') throw new DeviceUnavailableError(p.reason, p.tried, fixFor(p.reason));
  log?.(`device: cpu (auto: cuda unavailable: ${p.reason})`);
  return 'cpu';
}

/** What matmuls and convolutions round their operands to (fp32 accumulation, float32 tensors): the CUDA library's 'precision' option. */
export type Precision = 'fp32' | 'fp16' | 'bf16';
export const PRECISIONS: readonly Precision[] = ['fp32', 'fp16', 'bf16'];

export function parsePrecision(s: string): Precision {
  if ((PRECISIONS as readonly string[]).includes(s)) return s as Precision;
  throw new RangeError(`precision '${s}': expected one of ${PRECISIONS.join(', ')}`);
}

/**
 * Sets the precision of the CUDA backend (process-wide) for a run on `device`.
 * On the CPU only 'fp32' is accepted: the CPU engine computes in float32 (its
 * reduced precision is the integer path of quantized models), and a request
 * it would ignore is an error rather than a silent no-op.
 */
export function applyPrecision(device: Device, precision: Precision = 'fp32'): void {
  parsePrecision(precision);
  if (device === 'cpu') {
    if (precision !== 'fp32') throw new RangeError(`precision '${precision}' needs device 'cuda': the CPU engine computes in fp32 (use --precision fp32, or --device cuda)`);
    return;
  }
  native().cudaSetOption('precision', precision);
}

/**
 * For a rank of a multi-process run on one machine with several GPUs: the
 * CUDA_VISIBLE_DEVICES value that gives it GPU (local rank mod GPU count), so
 * every rank's backend (which uses its first visible device) and NCCL get
 * their own. Undefined when nothing is to pin (not launched by MPI, one GPU
 * or none). `visible`: the CUDA_VISIBLE_DEVICES the launcher set, if any;
 * `count`: the GPUs the driver lists.
 */
export function localDevicePin(env: NodeJS.ProcessEnv, count: number): string | undefined {
  const v = env.OMPI_COMM_WORLD_LOCAL_RANK ?? env.MPI_LOCALRANKID ?? env.PMIX_LOCAL_RANK ?? env.MV2_COMM_WORLD_LOCAL_RANK;
  const local = v === undefined ? NaN : Number(v);
  if (!Number.isInteger(local) || local < 0) return undefined;
  const visible = env.CUDA_VISIBLE_DEVICES?.split(',').map((d) => d.trim()).filter((d) => d !== '');
  const ids = visible ?? Array.from({ length: count }, (_, i) => String(i));
  if (ids.length < 2) return undefined;
  return ids[local % ids.length];
}

/** GPUs the NVIDIA driver lists (/proc/driver/nvidia/gpus), without loading CUDA. */
export function driverGpuCount(): number {
  try {
    return fs.readdirSync('/proc/driver/nvidia/gpus').length;
  } catch {
    return 0;
  }
}

/** Applies localDevicePin to this process before CUDA is first loaded (by the communicator of a launched run). */
export function pinLocalDevice(env: NodeJS.ProcessEnv = process.env): void {
  const pin = localDevicePin(env, driverGpuCount());
  if (pin !== undefined) env.CUDA_VISIBLE_DEVICES = pin;
}
