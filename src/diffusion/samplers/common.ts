// What every sampler shares: the model interface, the options, timestep
// tensors, and the step loop that keeps memory bounded and the event loop free.
import { noGrad } from '../../tensor/autograd';
import type { Device } from '../../tensor/native';
import { clamp, detach, lincomb } from '../../tensor/ops/elementwise';
import { Generator } from '../../tensor/random';
import { keep, tidy } from '../../tensor/scope';
import { type Shape, type Tensor, fromArray, shapeToString, sync } from '../../tensor/tensor';

/**
 * A noise-prediction network: x (B, ...) and t (B) float32 timesteps (model
 * time, 0..T-1; fractional for DPM-Solver) -> predicted epsilon, same shape as x.
 * Synchronous: it queues native ops and returns. Conditioning (text embeddings,
 * guidance) is captured in the closure.
 */
export type EpsModel = (x: Tensor, t: Tensor) => Tensor;

export type ProgressFn = (step: number, total: number) => void;

export interface SamplerOptions {
  /** Shape of the batch of samples, batch first: (B, C, H, W), (B, D), ... */
  shape: Shape;
  /** Seed of the Generator that draws x_T and every step's noise (default 0). */
  seed?: number;
  /** Draw from this generator instead of a new Generator(seed); it advances. */
  generator?: Generator;
  /** Called after each step with (step, total), step = 1..total. */
  onProgress?: ProgressFn;
  /** Stops the loop between steps; sample() then rejects with an AbortError. */
  signal?: AbortSignal;
  /** The starting noise (shape `shape`); copied, the caller keeps ownership. Default: randn. */
  x_T?: Tensor;
  /** Where x_T and timestep tensors live (default: x_T's device, else 'cpu'). */
  device?: Device;
}

/** Rejection reason of an aborted sampler: name 'AbortError', cause = signal.reason. */
export class SamplingAbortedError extends Error {
  override readonly name = 'AbortError';
  constructor(message: string, cause?: unknown) {
    super(message, { cause });
  }
}

// Timestep tensors made by the samplers remember their float64 values, so a model
// that needs t on the JS side (the analytic Gaussian) reads them without a sync.
const knownTimesteps = new WeakMap<Tensor, Float64Array>();

/** A (B) float32 tensor filled with the model time t. */
export function timestepTensor(t: number, batch: number, device: Device = 'cpu'): Tensor {
  const values = new Float64Array(batch).fill(t);
  const out = fromArray(new Float32Array(values), [batch], 'float32', device);
  knownTimesteps.set(out, values);
  return out;
}

/** The values of a timestep tensor: exact when a sampler made it, else read back (blocking). */
export function timestepValues(t: Tensor): Float64Array {
  const known = knownTimesteps.get(t);
  if (known) return known;
  return Float64Array.from(t.dataSync() as ArrayLike<number>);
}

export function checkSamplerOptions(opts: SamplerOptions): void {
  const { shape } = opts;
  if (!Array.isArray(shape) || shape.length < 1 || !shape.every((d) => Number.isInteger(d) && d > 0))
    throw new RangeError(`sample: shape must be a non-empty list of positive integers, got ${JSON.stringify(shape)}`);
  if (opts.seed !== undefined && (!Number.isSafeInteger(opts.seed) || opts.seed < 0))
    throw new RangeError(`sample: seed must be a non-negative safe integer, got ${opts.seed}`);
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') throw new TypeError('sample: onProgress must be a function');
  if (opts.x_T !== undefined) {
    if (opts.x_T === null || (opts.x_T as { isTensor?: boolean }).isTensor !== true) throw new TypeError('sample: x_T must be a Tensor');
    if (opts.x_T.dtype !== 'float32') throw new TypeError(`sample: x_T must be float32, got ${opts.x_T.dtype}`);
    if (opts.x_T.shape.join() !== shape.join())
      throw new RangeError(`sample: x_T has shape ${shapeToString(opts.x_T.shape)}, expected ${shapeToString(shape)}`);
  }
}

export function checkSteps(steps: number, T: number): void {
  if (typeof steps !== 'number' || !Number.isInteger(steps)) throw new TypeError(`sample: steps must be an integer, got ${String(steps)}`);
  if (steps < 1 || steps > T) throw new RangeError(`sample: steps must lie in [1, ${T}] for a ${T}-step schedule, got ${steps}`);
}

/**
 * clip_denoised for an epsilon prediction at cumulative alpha `abar`: the predicted
 * x_0 = (x - sqrt(1 - abar) eps) / sqrt(abar) clamped to [-1, 1], and the epsilon
 * consistent with that x_0 and x, eps' = (x - sqrt(abar) x_0) / sqrt(1 - abar).
 */
export function clipEpsilon(x: Tensor, eps: Tensor, abar: number): Tensor {
  const x0 = clamp(lincomb([x, eps], [1 / Math.sqrt(abar), -Math.sqrt((1 - abar) / abar)]), -1, 1);
  return lincomb([x, x0], [1 / Math.sqrt(1 - abar), -Math.sqrt(abar / (1 - abar))]);
}

function throwIfAborted(signal: AbortSignal | undefined, step: number, total: number): void {
  if (signal?.aborted) throw new SamplingAbortedError(`sampling aborted before step ${step + 1} of ${total}`, signal.reason);
}

/**
 * The state a sampler carries from one step to the next: the current x and
 * whatever earlier model outputs a multistep method needs.
 */
export interface LoopState {
  x: Tensor;
  history: Tensor[];
}

export interface Loop {
  gen: Generator;
  device: Device;
  batch: number;
  /** Calls the model at model time t (a number), checking the output shape. */
  eps(model: EpsModel, x: Tensor, t: number): Tensor;
}

function owned(s: LoopState): Tensor[] {
  return [s.x, ...s.history];
}

/**
 * Runs `total` steps. Each step runs in tidy() with gradients off, so every
 * intermediate is freed when it returns; the previous state's tensors that the
 * new state does not carry are disposed; then `await sync()` lets the queued
 * work drain (bounding memory to about one step) and frees the event loop.
 * On abort or error every tensor the loop owns is freed before rejecting.
 */
export async function runSampler(
  opts: SamplerOptions,
  total: number,
  step: (s: LoopState, i: number, loop: Loop) => LoopState,
): Promise<Tensor> {
  throwIfAborted(opts.signal, 0, total);
  const gen = opts.generator ?? new Generator(opts.seed ?? 0);
  const device: Device = opts.device ?? opts.x_T?.device ?? 'cpu';
  const batch = opts.shape[0];
  const loop: Loop = {
    gen,
    device,
    batch,
    eps(model, x, t) {
      const out = model(x, timestepTensor(t, batch, device));
      if (!out || (out as { isTensor?: boolean }).isTensor !== true) throw new TypeError('sample: the model must return a Tensor');
      if (out.shape.join() !== x.shape.join())
        throw new RangeError(`sample: the model returned shape ${shapeToString(out.shape)} for input ${shapeToString(x.shape)}`);
      return out;
    },
  };
  let state: LoopState = { x: keep(opts.x_T ? noGrad(() => detach(opts.x_T!)) : gen.randn(opts.shape, device)), history: [] };
  try {
    for (let i = 0; i < total; ++i) {
      throwIfAborted(opts.signal, i, total);
      const prev = state;
      const next = noGrad(() => tidy(() => step(prev, i, loop)));
      const carried = new Set(owned(next));
      for (const t of carried) keep(t);
      for (const t of owned(prev)) if (!carried.has(t)) t.dispose();
      state = next;
      await sync();
      opts.onProgress?.(i + 1, total);
    }
  } catch (e) {
    for (const t of owned(state)) t.dispose();
    throw e;
  }
  for (const t of state.history) t.dispose();
  return state.x;
}
