// `tdq-native inspect`: the quantizers of a quantized checkpoint, printed, and
// PNG plots of step size against timestep (static: a flat line; TDQ: a curve)
// and of the activation range per timestep seen during calibration.
import fs from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';

import { readTensorFile } from '../../io/checkpoint_file';
import { CheckpointValueError, type NumberProblem, describeProblem, findNumberProblems, refused } from '../../models/checks';
import { describeConfig } from '../../quant/config';
import { type ActQuantizerInfo, type QuantizedCheckpointInfo, NotQuantizedError, describeQuantized } from '../../quant/inspect';
import { plotActivationRanges, plotStepCurves } from '../../quant/plot';
import { coveredRangeOf } from '../../quant/step_search';
import type { Tensor } from '../../tensor/tensor';
import { type GlobalArgs, CliError } from '../index';
import { checkCount, probeWritableDir } from './preflight';

/** --max-plots at most this: each plotted layer is a curve in one figure. */
export const MAX_PLOTS = 64;

interface InspectArgs extends GlobalArgs {
  ckpt: string;
  layers: string[];
  maxPlots: number;
  outDir?: string;
  ema: boolean;
  plots: boolean;
  json: boolean;
  allowNonFinite: boolean;
}

/**
 * The model state dict of a checkpoint file: this project's training
 * checkpoints keep it under 'model.' (EMA under 'ema.', used for parameters
 * when `ema`); a plain state dict is used as is.
 */
export function modelTensors(tensors: Map<string, Tensor>, metadata: Record<string, string>, ema: boolean): Map<string, Tensor> {
  const prefixed = metadata.format?.startsWith('tdq-native/checkpoint') || [...tensors.keys()].some((k) => k.startsWith('model.') && /(act|weight)_quant\./.test(k));
  if (!prefixed) return tensors;
  const out = new Map<string, Tensor>();
  for (const [k, t] of tensors) if (k.startsWith('model.')) out.set(k.slice(6), t);
  if (ema) for (const [k, t] of tensors) if (k.startsWith('ema.') && out.has(k.slice(4))) out.set(k.slice(4), t);
  return out;
}

function fmt(v: number): string {
  return v === 0 ? '0' : Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toPrecision(4) : v.toExponential(3);
}

function rangeText(q: ActQuantizerInfo): string {
  if (q.range.signed) return 'signed';
  return q.range.zeroPoint === 0 ? 'unsigned' : `unsigned z=${fmt(q.range.zeroPoint)}`;
}

function stepText(q: ActQuantizerInfo): string {
  if (q.staticStep !== undefined) return fmt(q.staticStep);
  const s = q.curve!.step;
  let lo = Infinity, hi = -Infinity;
  for (const v of s) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  return `${fmt(lo)} .. ${fmt(hi)} (${q.curve!.source}; t=0: ${fmt(s[0])}, t=${s.length - 1}: ${fmt(s[s.length - 1])})`;
}

/** Bad numbers of the checkpoint that belong to quantizer `name` (keys with or without the 'model.'/'ema.' prefix). */
function problemsOf(name: string, problems: readonly NumberProblem[]): NumberProblem[] {
  return problems.filter((p) => p.key.replace(/^(model|ema)\./, '').startsWith(`${name}.`));
}

/** The printed report; bad numbers (loaded with --allow-non-finite) are listed first and marked in the table. */
export function formatInspect(file: string, info: QuantizedCheckpointInfo, problems: readonly NumberProblem[] = []): string {
  const c = info.config;
  const lines = [
    `${file}: ${describeConfig(c)}, T = ${info.timesteps}`,
    `  activation quantizers: ${info.act.length} (per tensor${c.useDynamic ? ', step from the timestep by TDQ' : ''}); weight quantizers: ${info.weights.length} (per output channel, ${c.nBitW} bits)`,
    `  full precision: ${c.keepFp === 'paper' ? 'the paper default (time embedding MLP, emb projections, first and last conv)' : c.keepFp.join(', ') || 'none'}`,
    `  attention matmul inputs quantized: ${c.quantizeAttention ? 'yes' : 'no'}`,
    '',
  ];
  const bad = refused(problems), floored = problems.filter((p) => p.kind === 'floored');
  if (bad.length) {
    lines.push(`  WARNING: ${bad.length} tensor${bad.length > 1 ? 's hold' : ' holds'} bad numbers (rows marked '!! bad'):`);
    for (const p of bad) lines.push(`    ${describeProblem(p)}`);
    lines.push('');
  }
  if (floored.length) {
    lines.push(`  note: ${floored.length} learned step tensor${floored.length > 1 ? 's have' : ' has'} entries <= 0, used as the step floor 1e-8 (rows marked 'floored'):`);
    for (const p of floored) lines.push(`    ${describeProblem(p)}`);
    lines.push('');
  }
  const w = Math.max(...info.act.map((q) => q.name.length), 4);
  lines.push(`  ${'name'.padEnd(w)}  kind  ${'range'.padEnd(20)}  step`);
  for (const q of info.act) {
    const cal = q.calib ? `   calibrated ${fmt(Math.min(...q.calib.step))} .. ${fmt(Math.max(...q.calib.step))} over ${q.calib.t.length} timesteps` : '';
    const mine = problemsOf(q.name, problems);
    const mark = mine.some((p) => p.kind !== 'floored') ? '   !! bad' : mine.length ? '   floored' : '';
    lines.push(`  ${q.name.padEnd(w)}  ${q.kind.padEnd(4)}  ${rangeText(q).padEnd(20)}  ${stepText(q)}${cal}${mark}`);
  }
  return lines.join('\n');
}

function globToRegExp(p: string): RegExp {
  return new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
}

/** The quantizers to plot: those matching `patterns` (each must match), or up to `max` spread over the model. */
export function selectForPlot(act: ActQuantizerInfo[], patterns: string[], max: number): ActQuantizerInfo[] {
  if (patterns.length) {
    const out = new Set<ActQuantizerInfo>();
    for (const p of patterns) {
      const re = globToRegExp(p), re2 = globToRegExp(`${p}.act_quant`);
      const hits = act.filter((q) => re.test(q.name) || re2.test(q.name));
      if (!hits.length) throw new CliError(`--layers '${p}' matches no quantized layer (e.g. ${act.slice(0, 3).map((q) => q.name.replace(/\.act_quant$/, '')).join(', ')})`);
      hits.forEach((h) => out.add(h));
    }
    return [...out];
  }
  if (act.length <= max) return act;
  return Array.from({ length: max }, (_, i) => act[Math.round((i * (act.length - 1)) / (max - 1))]);
}

export const inspectCommand: CommandModule<GlobalArgs, InspectArgs> = {
  command: 'inspect',
  describe: 'print the quantizers of a quantized checkpoint and plot step size and activation range against timestep',
  builder: (y) =>
    y
      .option('ckpt', { type: 'string', demandOption: true, describe: 'quantized checkpoint (.safetensors)' })
      .option('layers', { type: 'string', array: true, default: [], describe: "layers to plot (names or '*' patterns, e.g. 'input_blocks.1.0.in_layers.2' '*.qkv')" })
      .option('max-plots', { alias: 'max_plots', type: 'number', default: 6, describe: 'layers plotted when --layers is not given (spread over the model)' })
      .option('out-dir', { alias: 'out_dir', type: 'string', describe: 'folder for the PNGs (default: beside the checkpoint)' })
      .option('ema', { type: 'boolean', default: true, describe: 'read parameters from the EMA weights of a training checkpoint' })
      .option('plots', { type: 'boolean', default: true, describe: 'write the PNG plots' })
      .option('json', { type: 'boolean', default: false, describe: 'print the quantizers as JSON' })
      .option('allow-non-finite', { type: 'boolean', default: false, describe: 'read a checkpoint with NaN/Inf tensors or non-positive steps (marked in the table) instead of rejecting it' })
      .example('$0 inspect --ckpt runs/tdq-w4a8/model.safetensors', 'quantizers and plots of a QAT model')
      .example("$0 inspect --ckpt q.safetensors --layers '*.in_layers.2' --out-dir plots", 'plot chosen layers') as unknown as Argv<InspectArgs>,
  handler: async (a) => {
    if (!fs.existsSync(a.ckpt)) throw new CliError(`checkpoint not found: ${a.ckpt}`);
    checkCount('max-plots', a.maxPlots, MAX_PLOTS);
    if (!a.plots) {
      if (a.outDir !== undefined) throw new CliError('--out-dir does not apply with --no-plots (it is where the plots go)');
      if (a.layers.length) throw new CliError('--layers does not apply with --no-plots (it chooses the plotted layers)');
    } else probeWritableDir(a.outDir ?? path.dirname(a.ckpt), 'out-dir');
    const { tensors, metadata } = await readTensorFile(a.ckpt);
    try {
      const problems = findNumberProblems(tensors);
      if (refused(problems).length && !a.allowNonFinite) throw new CliError(new CheckpointValueError(a.ckpt, refused(problems)).message);
      let info: QuantizedCheckpointInfo;
      try {
        info = describeQuantized(modelTensors(tensors, metadata, a.ema), metadata, a.ckpt);
      } catch (e) {
        if (e instanceof NotQuantizedError) throw new CliError(e.message);
        throw e;
      }
      if (a.json) {
        console.log(JSON.stringify({ problems, config: info.config, timesteps: info.timesteps, weights: info.weights, act: info.act.map((q) => ({ ...q, curve: q.curve ? { source: q.curve.source, step: Array.from(q.curve.step) } : undefined })) }));
      } else console.log(formatInspect(a.ckpt, info, problems));
      if (!a.plots) return;
      const chosen = selectForPlot(info.act, a.layers, a.maxPlots);
      const dir = a.outDir ?? path.dirname(a.ckpt);
      fs.mkdirSync(dir, { recursive: true });
      const stem = path.join(dir, path.basename(a.ckpt).replace(/\.safetensors$/, ''));
      const stepsPng = plotStepCurves(chosen.map((q) => ({
        name: q.name,
        tdq: q.curve ? { t: q.curve.t, step: q.curve.step } : undefined,
        staticStep: q.staticStep,
        calib: q.calib ? { t: q.calib.t, step: q.calib.step } : undefined,
      })));
      fs.writeFileSync(`${stem}-steps.png`, stepsPng);
      const written = [`${stem}-steps.png`];
      const withCalib = chosen.filter((q) => q.calib);
      if (withCalib.length) {
        fs.writeFileSync(`${stem}-ranges.png`, plotActivationRanges(withCalib.map((q) => ({
          name: q.name, t: q.calib!.t, min: q.calib!.min, max: q.calib!.max,
          covered: q.staticStep !== undefined ? coveredRangeOf(q.staticStep, q.bits, q.range) : undefined,
        }))));
        written.push(`${stem}-ranges.png`);
      }
      console.log(`tdq-native: wrote ${written.join(', ')}${withCalib.length ? '' : ' (no calibration statistics in this checkpoint: no range plot)'}`);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  },
};
