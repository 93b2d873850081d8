// The Tensor: a JS handle over native storage, plus the autograd fields.
// Ops are queued on the native stream and return at once; reading values
// (data(), item()) is a Promise that resolves when the stream gets there.
import { type Device, type DType, type Attrs, type NativeTensor, type TypedArray, native, TYPED_ARRAYS } from './native';
import { track } from './scope';

export type { DType, Device } from './native';
export type Shape = readonly number[];

/** A node of the autograd graph: how to turn d(loss)/d(out) into d(loss)/d(inputs). */
export interface GradNode {
  readonly op: string;
  readonly inputs: readonly (Tensor | null)[];
  /** Returns one gradient per input (null where an input needs none). */
  backward(gradOut: Tensor): (Tensor | null)[];
}

export function shapeToString(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export class Tensor {
  readonly isTensor = true;
  readonly shape: Shape;
  readonly dtype: DType;
  /** Set on leaves (parameters) that collect .grad, and on results of ops on them. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after backward(). */
  grad: Tensor | null = null;
  /** The op that produced this tensor, when it needs a gradient. */
  gradFn: GradNode | null = null;
  private handle_: NativeTensor | null;
  private device_: Device;

  constructor(handle: NativeTensor) {
    this.handle_ = handle;
    this.shape = Object.freeze(handle.shape.slice());
    this.dtype = handle.dtype;
    this.device_ = handle.device;
    track(this);
  }

  /** Where the storage lives; changes only through adoptStorage (Module.to moves parameters in place). */
  get device(): Device {
    return this.device_;
  }

  get handle(): NativeTensor {
    if (!this.handle_) throw new Error(`tensor of shape ${shapeToString(this.shape)} has been disposed`);
    return this.handle_;
  }

  get disposed(): boolean {
    return this.handle_ === null;
  }

  get size(): number {
    return numel(this.shape);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get nbytes(): number {
    return this.handle_ ? this.handle_.nbytes : 0;
  }

  /** Frees this handle's storage now (ops already queued still complete). Idempotent. */
  dispose(): void {
    if (this.handle_) {
      this.handle_.dispose();
      this.handle_ = null;
    }
    this.gradFn = null;
  }

  /**
   * Takes over src's storage (same shape and dtype), freeing this tensor's;
   * src is left disposed. The tensor keeps its identity (a parameter stays
   * the module's): quantized layers drop their float weights while integer
   * levels stand in for them, and bring them back this way.
   */
  adoptStorage(src: Tensor): void {
    if (src === this) return;
    if (src.dtype !== this.dtype || src.shape.join() !== this.shape.join())
      throw new TypeError(`adoptStorage: expected ${this.dtype} ${shapeToString(this.shape)}, got ${src.dtype} ${shapeToString(src.shape)}`);
    const h = src.handle;
    this.handle_?.dispose();
    this.handle_ = h;
    this.device_ = h.device;
    src.handle_ = null;
  }

  /**
   * A copy on `device` (this tensor itself when it is there already), made
   * once every queued op that writes this one has run. Not recorded for
   * autograd: the copy is a leaf.
   */
  to(device: Device): Tensor {
    if (device === this.device) return this;
    return new Tensor(native().fromData(this.handle.readSync(), this.shape, this.dtype, device));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** The values, once every queued op that writes them has run. */
  async data(): Promise<TypedArray> {
    return this.handle.read();
  }

  /** As data(), for float32 tensors. */
  async float32(): Promise<Float32Array> {
    if (this.dtype !== 'float32') throw new TypeError(`float32(): tensor is ${this.dtype}`);
    return (await this.handle.read()) as Float32Array;
  }

  /** Blocks the calling thread until the values are ready: for tests and scripts. */
  dataSync(): TypedArray {
    return this.handle.readSync();
  }

  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item(): tensor has ${this.size} elements, expected 1`);
    return (await this.data())[0];
  }

  toString(): string {
    return `Tensor(${shapeToString(this.shape)}, ${this.dtype}${this.disposed ? ', disposed' : ''})`;
  }
}

/** Runs a native op and wraps its outputs. */
export function runOp(op: string, inputs: (Tensor | null)[], attrs: Attrs = {}): Tensor[] {
  const handles = inputs.map((t) => (t ? t.handle : null));
  return native().run(op, handles, attrs).map((h) => new Tensor(h));
}

export function runOp1(op: string, inputs: (Tensor | null)[], attrs: Attrs = {}): Tensor {
  const outs = runOp(op, inputs, attrs);
  if (outs.length !== 1) throw new Error(`op ${op} returned ${outs.length} outputs, expected 1`);
  return outs[0];
}

export function fromArray(
  data: ArrayLike<number> | TypedArray,
  shape: Shape,
  dtype: DType = 'float32',
  device: Device = 'cpu',
): Tensor {
  const Ctor = TYPED_ARRAYS[dtype];
  const typed = data instanceof Ctor ? (data as TypedArray) : Ctor.from(data as ArrayLike<number>);
  return new Tensor(native().fromData(typed, shape, dtype, device));
}

/** A new tensor sharing storage with t, with another shape of the same size. */
export function viewHandle(t: Tensor, shape: Shape): Tensor {
  return new Tensor(native().view(t.handle, shape));
}

/**
 * Resolves when every op queued so far has run. It never rejects: an op that
 * fails poisons only its outputs (and what is computed from them), and reading
 * one of those rejects with the op's error.
 */
export function sync(): Promise<void> {
  return native().sync();
}

/**
 * Waits for the queued ops (whose frees run on the engine's thread), then
 * gives the cache of freed large host buffers back to the system. Call it
 * after disposing a model to bring resident memory down; resolves to the
 * bytes released.
 */
export async function releaseMemory(): Promise<number> {
  await sync();
  return native().releaseHostCache();
}
