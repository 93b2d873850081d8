// Line plots as PNG bytes, drawn with a built-in 5x7 pixel font and pngjs:
// the training loss curve, the quantizer step curves. No plotting library.
import { PNG } from 'pngjs';

/**
 * Centered moving average of y over `window` points (shorter at the ends),
 * skipping non-finite values: a smoothed curve without the lag of an EMA.
 */
export function smooth(points: readonly { x: number; y: number }[], window: number): { x: number; y: number }[] {
  const half = Math.max(0, Math.floor(window / 2));
  return points.map((p, i) => {
    let s = 0, n = 0;
    for (let j = Math.max(0, i - half); j <= Math.min(points.length - 1, i + half); ++j) {
      if (Number.isFinite(points[j].y)) {
        s += points[j].y;
        n += 1;
      }
    }
    return { x: p.x, y: n ? s / n : NaN };
  });
}

// A 5x7 pixel font: 7 rows of 5 columns per glyph ('#' = ink). Text is drawn
// in capitals; characters without a glyph show as '?'.
const FONT: Record<string, string> = {
  '0': '.###.|#...#|#..##|#.#.#|##..#|#...#|.###.',
  '1': '..#..|.##..|..#..|..#..|..#..|..#..|.###.',
  '2': '.###.|#...#|....#|...#.|..#..|.#...|#####',
  '3': '#####|...#.|..#..|...#.|....#|#...#|.###.',
  '4': '...#.|..##.|.#.#.|#..#.|#####|...#.|...#.',
  '5': '#####|#....|####.|....#|....#|#...#|.###.',
  '6': '..##.|.#...|#....|####.|#...#|#...#|.###.',
  '7': '#####|....#|...#.|..#..|.#...|.#...|.#...',
  '8': '.###.|#...#|#...#|.###.|#...#|#...#|.###.',
  '9': '.###.|#...#|#...#|.####|....#|...#.|.##..',
  A: '.###.|#...#|#...#|#####|#...#|#...#|#...#',
  B: '####.|#...#|#...#|####.|#...#|#...#|####.',
  C: '.###.|#...#|#....|#....|#....|#...#|.###.',
  D: '###..|#..#.|#...#|#...#|#...#|#..#.|###..',
  E: '#####|#....|#....|####.|#....|#....|#####',
  F: '#####|#....|#....|####.|#....|#....|#....',
  G: '.###.|#...#|#....|#.###|#...#|#...#|.####',
  H: '#...#|#...#|#...#|#####|#...#|#...#|#...#',
  I: '.###.|..#..|..#..|..#..|..#..|..#..|.###.',
  J: '..###|...#.|...#.|...#.|...#.|#..#.|.##..',
  K: '#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#',
  L: '#....|#....|#....|#....|#....|#....|#####',
  M: '#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#',
  N: '#...#|#...#|##..#|#.#.#|#..##|#...#|#...#',
  O: '.###.|#...#|#...#|#...#|#...#|#...#|.###.',
  P: '####.|#...#|#...#|####.|#....|#....|#....',
  Q: '.###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#',
  R: '####.|#...#|#...#|####.|#.#..|#..#.|#...#',
  S: '.####|#....|#....|.###.|....#|....#|####.',
  T: '#####|..#..|..#..|..#..|..#..|..#..|..#..',
  U: '#...#|#...#|#...#|#...#|#...#|#...#|.###.',
  V: '#...#|#...#|#...#|#...#|#...#|.#.#.|..#..',
  W: '#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.',
  X: '#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#',
  Y: '#...#|#...#|.#.#.|..#..|..#..|..#..|..#..',
  Z: '#####|....#|...#.|..#..|.#...|#....|#####',
  '.': '.....|.....|.....|.....|.....|.##..|.##..',
  ',': '.....|.....|.....|.....|.##..|..#..|.#...',
  '-': '.....|.....|.....|.###.|.....|.....|.....',
  '+': '.....|..#..|..#..|#####|..#..|..#..|.....',
  ':': '.....|.##..|.##..|.....|.##..|.##..|.....',
  '/': '.....|....#|...#.|..#..|.#...|#....|.....',
  '(': '...#.|..#..|.#...|.#...|.#...|..#..|...#.',
  ')': '.#...|..#..|...#.|...#.|...#.|..#..|.#...',
  '_': '.....|.....|.....|.....|.....|.....|#####',
  '=': '.....|.....|#####|.....|#####|.....|.....',
  '%': '##...|##..#|...#.|..#..|.#...|#..##|...##',
  '?': '.###.|#...#|....#|...#.|..#..|.....|..#..',
  ' ': '.....|.....|.....|.....|.....|.....|.....',
};

function glyph(ch: string): string {
  return (FONT[ch.toUpperCase()] ?? FONT['?']).replace(/\|/g, '');
}

type RGB = readonly [number, number, number];
const COLORS: readonly RGB[] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];

class Canvas {
  readonly data: Buffer;
  constructor(readonly width: number, readonly height: number) {
    this.data = Buffer.alloc(width * height * 3, 255);
  }
  set(x: number, y: number, c: RGB): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 3;
    this.data[i] = c[0];
    this.data[i + 1] = c[1];
    this.data[i + 2] = c[2];
  }
  rect(x0: number, y0: number, w: number, h: number, c: RGB): void {
    for (let y = y0; y < y0 + h; ++y) for (let x = x0; x < x0 + w; ++x) this.set(x, y, c);
  }
  /** A line of the given thickness, clipped to `clip` (x0, y0, x1, y1). */
  line(x0: number, y0: number, x1: number, y1: number, c: RGB, thick = 1, clip?: [number, number, number, number]): void {
    const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let i = 0; i <= n; ++i) {
      const x = x0 + ((x1 - x0) * i) / n, y = y0 + ((y1 - y0) * i) / n;
      if (clip && (x < clip[0] || x > clip[2] || y < clip[1] || y > clip[3])) continue;
      for (let dy = 0; dy < thick; ++dy) for (let dx = 0; dx < thick; ++dx) this.set(x + dx - (thick >> 1), y + dy - (thick >> 1), c);
    }
  }
  textWidth(s: string, scale: number): number {
    return s.length * 6 * scale - scale;
  }
  text(s: string, x: number, y: number, c: RGB, scale = 1): void {
    for (let k = 0; k < s.length; ++k) {
      const g = glyph(s[k]);
      for (let r = 0; r < 7; ++r) {
        for (let col = 0; col < 5; ++col) {
          if (g[r * 5 + col] === '#') this.rect(x + (k * 6 + col) * scale, y + r * scale, scale, scale, c);
        }
      }
    }
  }
}

export interface PlotSeries {
  name: string;
  points: readonly { x: number; y: number }[];
}

export interface PlotOptions {
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  /** Logarithmic y axis (non-positive values are left out). */
  logY?: boolean;
}

/** Tick values: multiples of 1, 2 or 5 x 10^k, about `target` of them. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? 10 * p;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  return out;
}

/** Tick values of a log axis: decades, with 2x and 5x when fewer than 3 decades fall in range. */
export function logTicks(lo: number, hi: number): number[] {
  const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
  const step = Math.max(1, Math.ceil((b - a) / 8));
  const ticks = (mults: number[]) => {
    const out: number[] = [];
    for (let e = a; e <= b; e += step) for (const m of mults) {
      const v = Number((m * 10 ** e).toPrecision(12));
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
    }
    return out;
  };
  const decades = ticks([1]);
  return decades.length >= 3 ? decades : ticks([1, 2, 5]);
}

function tickLabel(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e4 && a < 1e9 && Number.isInteger(v)) {
    if (a % 1e6 === 0) return `${v / 1e6}M`;
    if (a % 1e3 === 0) return `${v / 1e3}K`;
  }
  if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(4)));
  return v.toExponential().replace(/\.?0+e/, 'e').replace('e+', 'e');
}

/** Draws line series on axes and returns the PNG bytes. */
export function plotLines(series: readonly PlotSeries[], opts: PlotOptions = {}): Buffer {
  const W = opts.width ?? 800, H = opts.height ?? 500, S = 2; // S: font scale
  const cv = new Canvas(W, H);
  const logY = opts.logY ?? false;
  const ok = (p: { x: number; y: number }) => Number.isFinite(p.x) && Number.isFinite(p.y) && (!logY || p.y > 0);
  const pts = series.flatMap((s) => s.points.filter(ok));
  let x0 = Math.min(...pts.map((p) => p.x)), x1 = Math.max(...pts.map((p) => p.x));
  let y0 = Math.min(...pts.map((p) => p.y)), y1 = Math.max(...pts.map((p) => p.y));
  if (!pts.length) { x0 = 0; x1 = 1; y0 = logY ? 0.1 : 0; y1 = 1; }
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 = logY ? y0 / 2 : y0 - 1; y1 = logY ? y1 * 2 : y1 + 1; }
  const fy = (v: number) => (logY ? Math.log10(v) : v);
  let fy0 = fy(y0), fy1 = fy(y1);
  const padY = (fy1 - fy0) * 0.05;
  fy0 -= padY;
  fy1 += padY;
  const yTicks = logY ? logTicks(10 ** fy0, 10 ** fy1) : niceTicks(fy0, fy1);
  const xTicks = niceTicks(x0, x1, 6);
  const labelW = Math.max(...yTicks.map((t) => cv.textWidth(tickLabel(t), S)), 0);
  const L = labelW + 20, R = W - 20, T = opts.title ? 20 + 7 * S + 16 : 20, B = H - (20 + 7 * S + (opts.xLabel ? 7 * S + 12 : 0));
  const px = (x: number) => L + ((x - x0) / (x1 - x0)) * (R - L);
  const py = (y: number) => B - ((fy(y) - fy0) / (fy1 - fy0)) * (B - T);
  const grid: RGB = [225, 225, 225], ink: RGB = [0, 0, 0], grey: RGB = [90, 90, 90];
  for (const t of yTicks) {
    const y = Math.round(py(t));
    cv.line(L, y, R, y, grid);
    cv.line(L - 5, y, L, y, ink);
    const s = tickLabel(t);
    cv.text(s, L - 8 - cv.textWidth(s, S), y - (7 * S) / 2, grey, S);
  }
  for (const t of xTicks) {
    const x = Math.round(px(t));
    cv.line(x, T, x, B, grid);
    cv.line(x, B, x, B + 5, ink);
    const s = tickLabel(t);
    cv.text(s, Math.min(Math.max(x - cv.textWidth(s, S) / 2, 0), W - cv.textWidth(s, S)), B + 10, grey, S);
  }
  series.forEach((s, k) => {
    const c = COLORS[k % COLORS.length];
    let prev: { x: number; y: number } | null = null;
    for (const p of s.points) {
      if (!ok(p)) {
        prev = null; // a gap: NaN or a non-positive value on a log axis
        continue;
      }
      if (prev) cv.line(px(prev.x), py(prev.y), px(p.x), py(p.y), c, series.length > 1 && k === 0 ? 1 : 2, [L, T, R, B]);
      else cv.rect(Math.round(px(p.x)) - 1, Math.round(py(p.y)) - 1, 2, 2, c);
      prev = p;
    }
  });
  cv.line(L, T, L, B, ink);
  cv.line(L, B, R, B, ink);
  if (opts.title) {
    const t = opts.title + (logY ? ' (log scale)' : '');
    cv.text(t, (W - cv.textWidth(t, S)) / 2, 14, ink, S);
  }
  if (opts.xLabel) cv.text(opts.xLabel, (L + R - cv.textWidth(opts.xLabel, S)) / 2, H - 7 * S - 8, ink, S);
  if (series.length > 1) {
    let y = T + 8;
    const w = Math.max(...series.map((s) => cv.textWidth(s.name, S))) + 26;
    cv.rect(R - w - 14, y - 6, w + 8, series.length * (7 * S + 6) + 6, [255, 255, 255]);
    series.forEach((s, k) => {
      cv.rect(R - w - 8, y + 4, 14, 4, COLORS[k % COLORS.length]);
      cv.text(s.name, R - w + 12, y, ink, S);
      y += 7 * S + 6;
    });
  }
  return PNG.sync.write({ width: W, height: H, data: cv.data } as unknown as PNG, { colorType: 2, inputColorType: 2, inputHasAlpha: false });
}
