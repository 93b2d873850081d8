// The README's TDQ pictures (issue 13, "what to show"):
//
//   docs/tdq-steps-vs-t.png   step size against timestep for a few layers:
//     - the calibrated per-timestep steps (PTQ targets: 'auto', min-max at
//       8-bit activations, the 99.99th percentile below);
//     - the TDQ MLP fitted to them (PTQ);
//     - QAT's start (the authors' initialisation: (mean + 3 or 16 std) / qmax,
//       the same for every t) and, with --qat, the TDQ MLP learned by QAT;
//   docs/tdq-fid-vs-bits.png  FID-FMNIST against activation bits from the
//     ledger JSONs: one panel per kind (PTQ / QAT) and weight bits, one line
//     per method (mean over the seeds the ledger has), FP flat.
//
//   node dist/bench/tdq_plots.js [--ckpt models/fmnist-small.safetensors] \
//     [--qat RUN/model.safetensors] [--bits W4A4] [--layers a,b,c] \
//     [--ledgers bench/results/tdq-ledger.json,...] [--calib-samples 16] [--out-dir docs]
//
// The bits of the step plot come from --bits (or the --qat checkpoint's own).
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { type PlotSeries, plotLines } from '../src/io/plot';
import { loadModel } from '../src/models/load';
import { calibrateWithReport } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import { tilePngs } from '../src/quant/plot';
import { minmaxStep, statsOf, statsStep } from '../src/quant/step_search';
import { type Ledger, headlineGroup, readLedger } from './tdq_protocol';
import { freshUNet, loadFp } from './tdq_common';

const DEFAULT_LAYERS = ['input_blocks.1.0.in_layers.2', 'middle_block.0.out_layers.3', 'output_blocks.1.1.proj_out', 'output_blocks.5.0.skip_connection'];

interface PlotArgs {
  ckpt: string;
  qat: string;
  bits: string;
  layers: string[];
  ledgers: string[];
  calibSamples: number;
  outDir: string;
}

export function parsePlotArgs(argv: string[]): PlotArgs {
  const { values } = parseArgs({
    args: argv, strict: true, allowPositionals: false,
    options: {
      ckpt: { type: 'string' }, qat: { type: 'string' }, bits: { type: 'string' }, layers: { type: 'string' },
      ledgers: { type: 'string' }, 'calib-samples': { type: 'string' }, 'out-dir': { type: 'string' },
    },
  });
  const n = Number(values['calib-samples'] ?? 16);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--calib-samples: a positive integer, got '${values['calib-samples']}'`);
  const bits = (values.bits ?? '').toUpperCase();
  if (bits && !/^W\dA\d$/.test(bits)) throw new Error(`--bits: '${bits}' is not of the form W4A4`);
  const dflt = fs.existsSync('bench/results') ? fs.readdirSync('bench/results').filter((f) => /^tdq-ledger.*\.json$/.test(f)).map((f) => `bench/results/${f}`) : [];
  return {
    ckpt: values.ckpt ?? 'models/fmnist-small.safetensors',
    qat: values.qat ?? '',
    bits,
    layers: values.layers ? values.layers.split(',').map((s) => s.trim()) : DEFAULT_LAYERS,
    ledgers: values.ledgers ? values.ledgers.split(',') : dflt,
    calibSamples: n,
    outDir: values['out-dir'] ?? 'docs',
  };
}

const pts = (t: ArrayLike<number>, v: ArrayLike<number>) => Array.from({ length: t.length }, (_, i) => ({ x: t[i], y: v[i] }));

/** Step size against t: one panel per layer, the curves named in the header. */
async function stepPlot(a: PlotArgs): Promise<string> {
  const fp = await loadFp(a.ckpt);
  let qat: Awaited<ReturnType<typeof loadModel>> | null = null;
  let bits = a.bits;
  if (a.qat) {
    qat = await loadModel(a.qat, { config: fp.config });
    if (!qat.quantized) throw new Error(`--qat ${a.qat}: not a quantized checkpoint`);
    const c = qat.quantized.config;
    if (!c.useDynamic) throw new Error(`--qat ${a.qat}: a static (${c.staticMethod}) model; the step plot needs a TDQ one`);
    const own = `W${c.nBitW}A${c.nBitA}`;
    if (bits && bits !== own) throw new Error(`--bits ${bits}, but --qat ${a.qat} is ${own}`);
    bits = own;
  }
  bits ||= 'W4A4';
  const [, w, x] = /^W(\d)A(\d)$/.exec(bits)!.map(Number);
  const { model: ptq, report } = await calibrateWithReport(await freshUNet(fp), resolveQuantConfig({ nBitW: w, nBitA: x, useDynamic: true }), {
    schedule: fp.schedule, steps: 50, nSamples: a.calibSamples, seed: 1000, method: 'auto', sampleShape: fp.shape, keepStats: true,
  });
  ptq.buildTable();
  const T = ptq.timesteps;
  const tAll = Array.from({ length: T }, (_, i) => i);
  const byName = new Map(ptq.actQuantizers().map((q) => [q.name, q]));
  const qatByName = new Map((qat?.quantized?.actQuantizers() ?? []).map((q) => [q.name, q]));
  const panels: Buffer[] = [];
  for (const layer of a.layers) {
    const name = `${layer}.act_quant`;
    const q = byName.get(name);
    const r = report.quantizers.find((z) => z.name === name);
    if (!q || !r) throw new Error(`--layers: no activation quantizer '${name}' (known: ${[...byName.keys()].slice(0, 8).join(', ')}, ...)`);
    const list = report.stats!.get(name)!;
    const gmin = Math.min(...list.map((s) => s.min)), gmax = Math.max(...list.map((s) => s.max));
    const start = statsStep(list.map((s) => statsOf(s.sample)), x, q.range, minmaxStep(gmin, gmax, x, q.range));
    const series: PlotSeries[] = [
      { name: 'TDQ fit (PTQ)', points: pts(tAll, q.table!.values) },
      { name: 'calibrated (PTQ targets)', points: pts(r.t, r.steps) },
      { name: 'QAT start (stats)', points: [{ x: 0, y: start }, { x: T - 1, y: start }] },
    ];
    const lq = qatByName.get(name);
    if (lq?.table) series.push({ name: 'TDQ after QAT', points: pts(tAll, lq.table.values) });
    const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter((y) => y > 0);
    panels.push(plotLines(series, { width: 640, height: 320, title: `${layer} ${bits}`, xLabel: 'timestep t', logY: Math.max(...ys) > 5 * Math.min(...ys) }));
  }
  ptq.dispose();
  qat?.dispose();
  fs.mkdirSync(a.outDir, { recursive: true });
  const out = path.join(a.outDir, 'tdq-steps-vs-t.png');
  fs.writeFileSync(out, tilePngs(panels, 2));
  return out;
}

/**
 * FID against activation bits, per (PTQ / QAT, weight bits) panel, from
 * ledgers: the cells of one (DDIM steps, N) group only, as FID is biased by N
 * and moves with the step count (default: the headline's group, DDIM 25 at
 * the largest N); mean over seeds.
 */
export function fidSeries(ledgers: Ledger[], group?: { steps: number; n: number }): { panel: string; series: PlotSeries[] }[] {
  const pooled = ledgers.flatMap((l) => Object.values(l.cells));
  const g0 = group ?? headlineGroup({ setup: ledgers[0]?.setup, cells: Object.fromEntries(pooled.map((c, i) => [String(i), c])) } as Ledger);
  const cells = g0 ? pooled.filter((c) => c.steps === g0.steps && c.n === g0.n) : [];
  const fpFids = cells.filter((c) => c.method === 'fp').map((c) => c.fid);
  const groups = new Map<string, Map<string, Map<number, number[]>>>();
  for (const c of cells) {
    const m = /^W(\d)A(\d)$/.exec(c.bits);
    if (!m) continue;
    const panel = `${c.method.startsWith('qat-') ? 'QAT' : 'PTQ'} W${m[1]}`;
    const g = groups.get(panel) ?? new Map<string, Map<number, number[]>>();
    groups.set(panel, g);
    const s = g.get(c.method) ?? new Map<number, number[]>();
    g.set(c.method, s);
    s.set(Number(m[2]), [...(s.get(Number(m[2])) ?? []), c.fid]);
  }
  const mean = (v: number[]) => v.reduce((p, q) => p + q, 0) / v.length;
  return [...groups.entries()].sort(([p], [q]) => p.localeCompare(q)).map(([panel, g]) => {
    const series: PlotSeries[] = [...g.entries()].sort(([p], [q]) => (p.includes('tdq') ? -1 : q.includes('tdq') ? 1 : p.localeCompare(q)))
      .map(([method, s]) => ({ name: method, points: [...s.entries()].sort(([p], [q]) => p - q).map(([b, v]) => ({ x: b, y: mean(v) })) }));
    const xs = series.flatMap((s) => s.points.map((p) => p.x));
    if (fpFids.length && xs.length) series.push({ name: 'FP', points: [{ x: Math.min(...xs), y: mean(fpFids) }, { x: Math.max(...xs), y: mean(fpFids) }] });
    return { panel, series };
  });
}

function fidPlot(a: PlotArgs): string | null {
  const ledgers = a.ledgers.map((f) => {
    const l = readLedger(f);
    if (!l) throw new Error(`--ledgers ${f}: no such ledger`);
    return l;
  });
  const groups = fidSeries(ledgers);
  if (!groups.length) return null;
  const g = headlineGroup({ setup: ledgers[0].setup, cells: Object.fromEntries(ledgers.flatMap((l) => Object.values(l.cells)).map((c, i) => [String(i), c])) });
  const panels = groups.map(({ panel, series }) => plotLines(series, { width: 640, height: 360, title: `FID-FMNIST vs activation bits, ${panel} (DDIM ${g!.steps}, N = ${g!.n})`, xLabel: 'activation bits', logY: true }));
  fs.mkdirSync(a.outDir, { recursive: true });
  const out = path.join(a.outDir, 'tdq-fid-vs-bits.png');
  fs.writeFileSync(out, tilePngs(panels, Math.min(2, panels.length)));
  return out;
}

async function main(): Promise<void> {
  const a = parsePlotArgs(process.argv.slice(2));
  const fid = fidPlot(a);
  console.log(fid ? `wrote ${fid}` : 'no ledger cells: no FID plot');
  console.log(`wrote ${await stepPlot(a)}`);
}

if (require.main === module)
  main().catch((e) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e);
    process.exit(1);
  });
