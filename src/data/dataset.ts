// The Dataset interface shared by every image source, and the geometric
// transforms that bring an image to the model's size: centered padding or
// cropping, bilinear and area resampling. Images are planar float32 (C, H, W)
// in [-1, 1]; pixel byte p maps to p / 127.5 - 1, so a "zero" pad (pixel 0)
// is -1, the black background of MNIST-style data.

export interface Dataset {
  /** A short description for logs ("fashion-mnist train (60000)"). */
  readonly name: string;
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** The number of classes when samples carry labels, else 0. */
  readonly numClasses: number;
  /**
   * Writes sample `index` as float32 (C, H, W) in [-1, 1] into `out` at
   * `offset` (a new array when `out` is absent) and returns the array.
   */
  get(index: number, out?: Float32Array, offset?: number): Float32Array;
  /** The class of sample `index`, or -1 when the dataset is unlabeled. */
  label(index: number): number;
  /** What the dataset left out or changed while opening (symbolic-link loops, duplicates), for the run's log. */
  readonly notes?: readonly string[];
}

export type FitMode = 'auto' | 'pad' | 'resize' | 'crop';
export type PadMode = 'zero' | 'edge';
export type Interpolation = 'auto' | 'bilinear' | 'area';

/**
 * How a source image reaches the target size.
 * - pad: centered, filling with pixel 0 ('zero') or the nearest edge pixel
 *   ('edge'); a source larger than the target is center-cropped instead.
 * - resize: the whole image resampled to (H, W); the aspect ratio may change.
 * - crop: the largest centered box of the target's aspect ratio, resampled.
 * - auto: pad when the source fits inside the target, else crop.
 * Interpolation 'auto' uses area averaging when shrinking an axis (no
 * aliasing) and bilinear when enlarging it.
 */
export interface FitOptions {
  mode?: FitMode;
  pad?: PadMode;
  interpolation?: Interpolation;
}

export type Size = number | readonly [number, number];

export function sizeHW(size: Size, what = 'size'): [number, number] {
  const hw: [number, number] = typeof size === 'number' ? [size, size] : [size[0], size[1]];
  for (const d of hw) {
    if (!Number.isInteger(d) || d < 1) throw new RangeError(`${what} must be a positive integer or [height, width], got ${JSON.stringify(size)}`);
  }
  return hw;
}

export function checkIndex(ds: { name: string; length: number }, index: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= ds.length) {
    throw new RangeError(`${ds.name}: index ${index} out of range [0, ${ds.length})`);
  }
}

export function outputArray(size: number, out?: Float32Array, offset = 0): Float32Array {
  if (!out) return new Float32Array(size);
  if (!Number.isInteger(offset) || offset < 0 || offset + size > out.length) {
    throw new RangeError(`output array of length ${out.length} has no room for ${size} values at offset ${offset}`);
  }
  return out;
}

/** One axis of a separable resampling: output o reads taps[start[o] .. start[o+1]). */
interface AxisWeights {
  start: Int32Array;
  src: Int32Array;
  weight: Float32Array;
}

// Half-pixel centers (align_corners = false), as torch and PIL use.
function bilinearAxis(outLen: number, from: number, span: number): AxisWeights {
  const start = new Int32Array(outLen + 1);
  const src = new Int32Array(outLen * 2);
  const weight = new Float32Array(outLen * 2);
  const scale = span / outLen;
  for (let o = 0; o < outLen; ++o) {
    let s = (o + 0.5) * scale - 0.5;
    s = Math.min(Math.max(s, 0), span - 1);
    const i0 = Math.floor(s);
    const i1 = Math.min(i0 + 1, span - 1);
    const f = s - i0;
    start[o] = 2 * o;
    src[2 * o] = from + i0;
    src[2 * o + 1] = from + i1;
    weight[2 * o] = 1 - f;
    weight[2 * o + 1] = f;
  }
  start[outLen] = 2 * outLen;
  return { start, src, weight };
}

// Exact box filter: output o averages source interval [o*s, (o+1)*s) with
// fractional coverage of the pixels at its ends.
function areaAxis(outLen: number, from: number, span: number): AxisWeights {
  const scale = span / outLen;
  const starts: number[] = [0];
  const srcs: number[] = [];
  const weights: number[] = [];
  for (let o = 0; o < outLen; ++o) {
    const a = o * scale, b = (o + 1) * scale;
    for (let i = Math.floor(a); i < Math.min(Math.ceil(b), span); ++i) {
      const cover = Math.min(b, i + 1) - Math.max(a, i);
      if (cover > 1e-9) {
        srcs.push(from + i);
        weights.push(cover / scale);
      }
    }
    starts.push(srcs.length);
  }
  return { start: Int32Array.from(starts), src: Int32Array.from(srcs), weight: Float32Array.from(weights) };
}

function axisWeights(outLen: number, from: number, span: number, interp: Interpolation): AxisWeights {
  const kind = interp === 'auto' ? (span > outLen ? 'area' : 'bilinear') : interp;
  return kind === 'area' ? areaAxis(outLen, from, span) : bilinearAxis(outLen, from, span);
}

/**
 * Resamples the box rows [y0, y0+boxH) x cols [x0, x0+boxW) of a planar
 * (C, H, W) image to (C, outH, outW), written at dst[dstOff].
 */
export function resampleBox(
  src: ArrayLike<number>, c: number, h: number, w: number,
  box: { y0: number; x0: number; h: number; w: number },
  outH: number, outW: number, interp: Interpolation,
  dst: Float32Array, dstOff = 0,
): void {
  const ax = axisWeights(outW, box.x0, box.w, interp);
  const ay = axisWeights(outH, box.y0, box.h, interp);
  const tmp = new Float32Array(box.h * outW);
  for (let ch = 0; ch < c; ++ch) {
    const plane = ch * h * w;
    for (let y = 0; y < box.h; ++y) {
      const row = plane + (box.y0 + y) * w;
      for (let o = 0; o < outW; ++o) {
        let acc = 0;
        for (let t = ax.start[o]; t < ax.start[o + 1]; ++t) acc += ax.weight[t] * src[row + ax.src[t]];
        tmp[y * outW + o] = acc;
      }
    }
    const outPlane = dstOff + ch * outH * outW;
    for (let o = 0; o < outH; ++o) {
      for (let x = 0; x < outW; ++x) {
        let acc = 0;
        for (let t = ay.start[o]; t < ay.start[o + 1]; ++t) acc += ay.weight[t] * tmp[(ay.src[t] - box.y0) * outW + x];
        dst[outPlane + o * outW + x] = acc;
      }
    }
  }
}

/**
 * Places a (C, H, W) image centered in (C, outH, outW): padded where the
 * target is larger (fill value or edge replication), cropped where smaller.
 */
export function padCenter(
  src: ArrayLike<number>, c: number, h: number, w: number,
  outH: number, outW: number, pad: PadMode, fill: number,
  dst: Float32Array, dstOff = 0,
): void {
  // Offset of the source inside the target (negative: the source is cropped).
  const oy = Math.floor((outH - h) / 2), ox = Math.floor((outW - w) / 2);
  for (let ch = 0; ch < c; ++ch) {
    const plane = ch * h * w, outPlane = dstOff + ch * outH * outW;
    for (let y = 0; y < outH; ++y) {
      let sy = y - oy;
      const rowInside = sy >= 0 && sy < h;
      if (!rowInside) sy = Math.min(Math.max(sy, 0), h - 1);
      for (let x = 0; x < outW; ++x) {
        let sx = x - ox;
        const inside = rowInside && sx >= 0 && sx < w;
        if (!inside && pad === 'zero') {
          dst[outPlane + y * outW + x] = fill;
          continue;
        }
        sx = Math.min(Math.max(sx, 0), w - 1);
        dst[outPlane + y * outW + x] = src[plane + sy * w + sx];
      }
    }
  }
}

/** The largest centered box of aspect outH:outW inside an h x w image. */
export function centerBox(h: number, w: number, outH: number, outW: number): { y0: number; x0: number; h: number; w: number } {
  // Compare h/w with outH/outW without rounding: h*outW vs w*outH.
  let bh = h, bw = w;
  if (h * outW > w * outH) bh = Math.max(1, Math.round((w * outH) / outW));
  else if (h * outW < w * outH) bw = Math.max(1, Math.round((h * outW) / outH));
  return { y0: Math.floor((h - bh) / 2), x0: Math.floor((w - bw) / 2), h: bh, w: bw };
}

/**
 * Brings a planar (C, H, W) image in [-1, 1] to (C, outH, outW) as `opts`
 * says, writing at dst[dstOff]. `fill` is the value of a zero pad (-1 = pixel 0).
 */
export function fitImage(
  src: ArrayLike<number>, c: number, h: number, w: number,
  outH: number, outW: number, opts: FitOptions,
  dst: Float32Array, dstOff = 0, fill = -1,
): void {
  const interp = opts.interpolation ?? 'auto';
  let mode = opts.mode ?? 'auto';
  if (mode === 'auto') mode = h <= outH && w <= outW ? 'pad' : 'crop';
  if (h === outH && w === outW) mode = 'pad'; // a plain copy whatever the mode
  switch (mode) {
    case 'pad':
      padCenter(src, c, h, w, outH, outW, opts.pad ?? 'zero', fill, dst, dstOff);
      return;
    case 'resize':
      resampleBox(src, c, h, w, { y0: 0, x0: 0, h, w }, outH, outW, interp, dst, dstOff);
      return;
    case 'crop': {
      const box = centerBox(h, w, outH, outW);
      if (box.h === outH && box.w === outW) {
        padCenter(src, c, h, w, outH, outW, 'edge', fill, dst, dstOff);
      } else {
        resampleBox(src, c, h, w, box, outH, outW, interp, dst, dstOff);
      }
      return;
    }
  }
}
