// The paper's key pictures from this project's own model, as PNGs: one small
// panel per layer, tiled in a grid.
//   - step size against timestep: the TDQ curve (table or MLP), the
//     calibrated per-timestep steps, and a static quantizer's flat line;
//   - the activation range per timestep seen during calibration (min and max
//     of each layer's input), with the range a static step covers.
// Panels are drawn by the project's line plotter (src/train/log.ts) and
// pasted into one image here.
import { PNG } from 'pngjs';

import { type PlotSeries, plotLines } from '../io/plot';

export interface StepCurve {
  /** Layer (quantizer) name. */
  name: string;
  /** TDQ steps over timesteps (t ascending); absent for a static quantizer. */
  tdq?: { t: ArrayLike<number>; step: ArrayLike<number> };
  /** A static quantizer's step (drawn flat across the timesteps). */
  staticStep?: number;
  /** Calibrated per-timestep steps. */
  calib?: { t: ArrayLike<number>; step: ArrayLike<number> };
}

export interface RangeCurve {
  name: string;
  t: ArrayLike<number>;
  min: ArrayLike<number>;
  max: ArrayLike<number>;
  /** The interval a static quantizer covers, drawn flat. */
  covered?: [number, number];
}

export interface GridOptions {
  /** Panels per row (default: up to 3). */
  cols?: number;
  panelWidth?: number;
  panelHeight?: number;
  /** Logarithmic step axis: always, never, or 'auto' (default): where a panel's steps span more than 5x. */
  logY?: boolean | 'auto';
}

/** Pastes equally sized PNG panels into a grid, row by row. */
export function tilePngs(pngs: readonly Buffer[], cols: number): Buffer {
  if (!pngs.length) throw new RangeError('tilePngs: no panels');
  const imgs = pngs.map((b) => PNG.sync.read(b));
  const w = imgs[0].width, h = imgs[0].height;
  if (imgs.some((im) => im.width !== w || im.height !== h)) throw new RangeError('tilePngs: panels must have one size');
  const c = Math.max(1, Math.min(cols, imgs.length)), r = Math.ceil(imgs.length / c);
  const out = new PNG({ width: w * c, height: h * r });
  out.data.fill(255);
  imgs.forEach((im, k) => {
    const ox = (k % c) * w, oy = Math.floor(k / c) * h;
    for (let y = 0; y < h; ++y) im.data.copy(out.data, ((oy + y) * w * c + ox) * 4, y * w * 4, (y + 1) * w * 4);
  });
  return PNG.sync.write(out);
}

function pts(t: ArrayLike<number>, v: ArrayLike<number>): { x: number; y: number }[] {
  return Array.from({ length: t.length }, (_, i) => ({ x: t[i], y: v[i] }));
}

/** Short panel titles: the layer path without the quantizer suffix. */
function shortName(name: string): string {
  return name.replace(/\.(act_quant|out_quant)$/, (_, q) => (q === 'out_quant' ? ' (out)' : ''));
}

/** Step size against timestep, one panel per layer. */
export function plotStepCurves(curves: readonly StepCurve[], opts: GridOptions = {}): Buffer {
  const panels = curves.map((c) => {
    const series: PlotSeries[] = [];
    const tAll = [...(c.tdq ? Array.from(c.tdq.t) : []), ...(c.calib ? Array.from(c.calib.t) : [])];
    // The TDQ curve first (drawn thin), so the calibrated steps stay visible on top of it.
    if (c.tdq) series.push({ name: 'TDQ', points: pts(c.tdq.t, c.tdq.step) });
    if (c.calib) series.push({ name: 'calibrated', points: pts(c.calib.t, c.calib.step) });
    if (c.staticStep !== undefined) {
      const lo = tAll.length ? Math.min(...tAll) : 0, hi = tAll.length ? Math.max(...tAll) : 1;
      series.push({ name: 'static', points: [{ x: lo, y: c.staticStep }, { x: hi, y: c.staticStep }] });
    }
    const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter((y) => y > 0);
    const logY = opts.logY === undefined || opts.logY === 'auto' ? ys.length > 0 && Math.max(...ys) > 5 * Math.min(...ys) : opts.logY;
    return plotLines(series, { width: opts.panelWidth ?? 640, height: opts.panelHeight ?? 320, title: shortName(c.name), xLabel: 'timestep t', logY });
  });
  return tilePngs(panels, opts.cols ?? Math.min(3, panels.length));
}

/** Activation min and max per timestep, one panel per layer. */
export function plotActivationRanges(curves: readonly RangeCurve[], opts: GridOptions = {}): Buffer {
  const panels = curves.map((c) => {
    const series: PlotSeries[] = [
      { name: 'max', points: pts(c.t, c.max) },
      { name: 'min', points: pts(c.t, c.min) },
    ];
    if (c.covered) {
      const lo = Math.min(...Array.from(c.t)), hi = Math.max(...Array.from(c.t));
      series.push({ name: 'static hi', points: [{ x: lo, y: c.covered[1] }, { x: hi, y: c.covered[1] }] });
      series.push({ name: 'static lo', points: [{ x: lo, y: c.covered[0] }, { x: hi, y: c.covered[0] }] });
    }
    return plotLines(series, { width: opts.panelWidth ?? 640, height: opts.panelHeight ?? 320, title: shortName(c.name), xLabel: 'timestep t' });
  });
  return tilePngs(panels, opts.cols ?? Math.min(3, panels.length));
}
