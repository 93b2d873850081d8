// Image.resize of Pillow (the convolution resampler of Resample.c) for 8-bit
// images, integer for integer: upstream LDM's data classes (LSUNBase) resize
// with it, and a model trained on one resampler is tested on the same one.
//
// Per axis, output pixel o covers source center (o + 0.5) * scale; the filter
// (support widened by the scale when shrinking, so it antialiases) is
// evaluated at the source pixels around it, normalised to sum 1, and turned
// into 22-bit fixed-point coefficients. The horizontal pass runs first, into
// an 8-bit intermediate holding only the rows the vertical pass reads, then
// the vertical pass; each pass rounds and clamps to 0..255 as Pillow does.

export type PilFilter = 'bilinear' | 'bicubic' | 'lanczos';

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

const FILTERS: Record<PilFilter, { support: number; f: (x: number) => number }> = {
  bilinear: { support: 1, f: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) },
  bicubic: {
    support: 2,
    f: (x) => {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  lanczos: {
    support: 3,
    f: (x) => {
      const sinc = (v: number) => (v === 0 ? 1 : Math.sin(Math.PI * v) / (Math.PI * v));
      return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
    },
  },
};

/** One axis: output o reads source [bounds[2o], bounds[2o] + bounds[2o+1]) with coefficients kk[o * ksize ..]. */
interface Coeffs {
  ksize: number;
  bounds: Int32Array;
  kk: Int32Array;
}

function precompute(inSize: number, outSize: number, filter: PilFilter): Coeffs {
  const { support: base, f } = FILTERS[filter];
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = base * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let o = 0; o < outSize; ++o) {
    const center = (o + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; ++x) {
      k[x] = f((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; ++x) {
      const v = ww !== 0 ? k[x] / ww : k[x];
      kk[o * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[2 * o] = xmin;
    bounds[2 * o + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

/**
 * Resizes a planar (C, H, W) 8-bit image to (C, outH, outW) as Pillow's
 * Image.resize((outW, outH), resample=filter) does, bit for bit.
 */
export function pilResize(src: Uint8Array, c: number, h: number, w: number, outH: number, outW: number, filter: PilFilter = 'bicubic'): Uint8Array {
  if (!(c >= 1 && h >= 1 && w >= 1 && outH >= 1 && outW >= 1) || src.length !== c * h * w)
    throw new RangeError(`pilResize: bad sizes (${c}, ${h}, ${w}) -> (${outH}, ${outW}) for ${src.length} values`);
  if (outH === h && outW === w) return src.slice();
  const needH = outW !== w, needV = outH !== h;
  const cx = precompute(w, outW, filter), cy = precompute(h, outH, filter);
  // The rows the vertical pass reads.
  const yFirst = cy.bounds[0], yLast = cy.bounds[2 * outH - 2] + cy.bounds[2 * outH - 1];
  let cur = src, curH = h, curW = w, yOff = 0;
  if (needH) {
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(c * rows * outW);
    for (let ch = 0; ch < c; ++ch) {
      for (let y = 0; y < rows; ++y) {
        const row = ch * h * w + (y + yFirst) * w;
        for (let o = 0; o < outW; ++o) {
          const xmin = cx.bounds[2 * o], xmax = cx.bounds[2 * o + 1], k = o * cx.ksize;
          let ss = ONE / 2;
          for (let x = 0; x < xmax; ++x) ss += src[row + xmin + x] * cx.kk[k + x];
          tmp[(ch * rows + y) * outW + o] = clip8(ss);
        }
      }
    }
    cur = tmp;
    curH = rows;
    curW = outW;
    yOff = yFirst;
  }
  if (!needV) return cur;
  const out = new Uint8Array(c * outH * curW);
  for (let ch = 0; ch < c; ++ch) {
    const plane = ch * curH * curW;
    for (let o = 0; o < outH; ++o) {
      const ymin = cy.bounds[2 * o] - yOff, ymax = cy.bounds[2 * o + 1], k = o * cy.ksize;
      for (let x = 0; x < curW; ++x) {
        let ss = ONE / 2;
        for (let y = 0; y < ymax; ++y) ss += cur[plane + (ymin + y) * curW + x] * cy.kk[k + y];
        out[(ch * outH + o) * curW + x] = clip8(ss);
      }
    }
  }
  return out;
}
