// Seeded synthetic images for tests and smoke runs. Sample i is a pure
// function of (seed, i) through hash64, so no storage is needed and every
// machine sees the same images.
import { hash64 } from '../tensor/random';
import { type Dataset, type Size, checkIndex, outputArray, sizeHW } from './dataset';

export type SyntheticKind = 'blobs' | 'shapes';

export interface SyntheticOptions {
  count: number;
  channels?: number;
  size?: Size;
  seed?: number;
  /**
   * blobs: 1-3 gaussian blobs on a dark background, label = blob count - 1.
   * shapes: one filled disc, square, triangle or cross, label = shape index.
   */
  kind?: SyntheticKind;
}

export const SHAPE_NAMES = ['disc', 'square', 'triangle', 'cross'] as const;

// Each sample draws at most this many numbers: counters i*STRIDE .. i*STRIDE+STRIDE-1.
const STRIDE = 64;

export class SyntheticDataset implements Dataset {
  readonly name: string;
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly numClasses: number;
  readonly kind: SyntheticKind;
  readonly seed: number;

  constructor(opts: SyntheticOptions) {
    if (!Number.isInteger(opts.count) || opts.count < 1) throw new RangeError(`synthetic dataset: count must be a positive integer, got ${opts.count}`);
    const channels = opts.channels ?? 1;
    if (!Number.isInteger(channels) || channels < 1) throw new RangeError(`synthetic dataset: channels must be a positive integer, got ${channels}`);
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`synthetic dataset: seed must be a non-negative integer, got ${seed}`);
    this.length = opts.count;
    this.channels = channels;
    [this.height, this.width] = sizeHW(opts.size ?? 32, 'synthetic dataset size');
    this.kind = opts.kind ?? 'shapes';
    if (this.kind !== 'blobs' && this.kind !== 'shapes') throw new RangeError(`synthetic dataset: kind must be 'blobs' or 'shapes', got ${String(this.kind)}`);
    this.numClasses = this.kind === 'blobs' ? 3 : SHAPE_NAMES.length;
    this.seed = seed;
    this.name = `synthetic ${this.kind} (${this.length}, ${this.channels}x${this.height}x${this.width}, seed ${seed})`;
  }

  private rand(index: number, k: number): number {
    return hash64(this.seed, index * STRIDE + k);
  }

  label(index: number): number {
    checkIndex(this, index);
    return Math.floor(this.rand(index, 0) * this.numClasses);
  }

  get(index: number, out?: Float32Array, offset = 0): Float32Array {
    checkIndex(this, index);
    const { channels: c, height: h, width: w } = this;
    const dst = outputArray(c * h * w, out, offset);
    const cls = this.label(index);
    // Per-channel brightness in [0.3, 1] so colored data differ per channel.
    const color: number[] = [];
    for (let ch = 0; ch < c; ++ch) color.push(0.3 + 0.7 * this.rand(index, 1 + (ch % 8)));
    const m = Math.min(h, w);
    const mask = new Float32Array(h * w); // coverage in [0, 1]
    if (this.kind === 'blobs') {
      for (let b = 0; b <= cls; ++b) {
        const cy = h * (0.2 + 0.6 * this.rand(index, 10 + 3 * b));
        const cx = w * (0.2 + 0.6 * this.rand(index, 11 + 3 * b));
        const sigma = m * (0.06 + 0.08 * this.rand(index, 12 + 3 * b));
        for (let y = 0; y < h; ++y) {
          for (let x = 0; x < w; ++x) {
            const d2 = (y + 0.5 - cy) ** 2 + (x + 0.5 - cx) ** 2;
            mask[y * w + x] = Math.min(1, mask[y * w + x] + Math.exp(-d2 / (2 * sigma * sigma)));
          }
        }
      }
    } else {
      const r = m * (0.18 + 0.14 * this.rand(index, 10)); // half extent
      const cy = r + (h - 2 * r) * this.rand(index, 11);
      const cx = r + (w - 2 * r) * this.rand(index, 12);
      for (let y = 0; y < h; ++y) {
        for (let x = 0; x < w; ++x) {
          const dy = (y + 0.5 - cy) / r, dx = (x + 0.5 - cx) / r;
          let inside: boolean;
          switch (SHAPE_NAMES[cls]) {
            case 'disc': inside = dx * dx + dy * dy <= 1; break;
            case 'square': inside = Math.abs(dx) <= 0.8 && Math.abs(dy) <= 0.8; break;
            // Apex up, base at dy = 0.8.
            case 'triangle': inside = dy <= 0.8 && dy >= -1 && Math.abs(dx) <= (dy + 1) / 1.8; break;
            default: inside = (Math.abs(dx) <= 0.25 && Math.abs(dy) <= 1) || (Math.abs(dy) <= 0.25 && Math.abs(dx) <= 1);
          }
          mask[y * w + x] = inside ? 1 : 0;
        }
      }
    }
    for (let ch = 0; ch < c; ++ch) {
      const base = offset + ch * h * w;
      for (let i = 0; i < h * w; ++i) dst[base + i] = -1 + 2 * color[ch] * mask[i];
    }
    return dst;
  }
}
