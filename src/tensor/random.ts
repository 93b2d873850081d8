// A seeded generator over the native Philox kernels. Its whole state is
// (seed, offset), so it is saved in checkpoints and restored exactly.
import type { Device } from './native';
import { type Shape, type Tensor, numel, runOp1 } from './tensor';

export interface GeneratorState {
  seed: number;
  offset: number;
}

export class Generator {
  seed: number;
  offset = 0;

  constructor(seed = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`Generator: seed must be a non-negative safe integer, got ${seed}`);
    this.seed = seed;
  }

  /**
   * Reserves n Philox counters for a native op that draws its own numbers
   * (dropout): returns the offset to pass it and advances past them.
   */
  nextOffset(n: number): number {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`Generator.nextOffset: n must be a non-negative integer, got ${n}`);
    const at = this.offset;
    this.offset += n;
    return at;
  }

  private take(shape: Shape): number {
    return this.nextOffset(numel(shape));
  }

  /**
   * Rows [start, start + shape[0]) of what randn([total, ...shape.slice(1)])
   * would give, advancing past all `total` rows (one rank's slice of a batch).
   */
  randnSlice(shape: Shape, start: number, total: number, device: Device = 'cpu'): Tensor {
    const row = numel(shape.slice(1));
    if (!Number.isInteger(start) || start < 0 || start + shape[0] > total) throw new RangeError(`Generator.randnSlice: rows [${start}, ${start + shape[0]}) do not fit ${total}`);
    const base = this.nextOffset(total * row);
    return runOp1('randn', [], { shape: [...shape], seed: this.seed, offset: base + start * row, device });
  }

  randn(shape: Shape, device: Device = 'cpu'): Tensor {
    return runOp1('randn', [], { shape: [...shape], seed: this.seed, offset: this.take(shape), device });
  }

  rand(shape: Shape, device: Device = 'cpu'): Tensor {
    return runOp1('rand', [], { shape: [...shape], seed: this.seed, offset: this.take(shape), device });
  }

  /** A uniform integer in [0, n) drawn on the JS side (shuffles, timesteps). */
  randint(n: number): number {
    // splitmix64-style hash of (seed, offset): no native round trip needed.
    const x = hash64(this.seed, this.offset++);
    return Math.floor(x * n);
  }

  state(): GeneratorState {
    return { seed: this.seed, offset: this.offset };
  }

  setState(s: GeneratorState): void {
    this.seed = s.seed;
    this.offset = s.offset;
  }
}

/** A uniform number in [0, 1) from (seed, counter), identical on every machine. */
export function hash64(seed: number, counter: number): number {
  let z = (BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(counter) + 0x632be59bd9b4e019n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  z = z ^ (z >> 31n);
  return Number(z >> 11n) / 2 ** 53;
}
