// `tdq-native convert IN.ckpt OUT.safetensors [--half] [--ema]`: a PyTorch
// checkpoint (torch.save, zip or legacy; a Lightning .ckpt or a plain state
// dict) read without executing anything, its state dict written as
// safetensors. Tensors are read one at a time from the file by offset; the
// whole file is never held in memory.
//
// `tdq-native convert IN.safetensors OUT.safetensors --weights-format int|float`:
// a quantized checkpoint of this project rewritten with its quantized
// layers' weights as integer levels or float32 (src/quant/weights_format.ts),
// from the weights sampling uses (the EMA when there is one).
import fs from 'node:fs';
import path from 'node:path';
import type { CommandModule } from 'yargs';

import { writeSafetensors } from '../../io/safetensors';
import { ModelLoadError, loadModel } from '../../models/load';
import { type WeightsFormat, saveQuantizedCheckpoint, weightsFormatOf } from '../../quant/weights_format';
import { applyEma, dropIgnoredKeys } from '../../io/torch_ckpt/ldm';
import { TorchCheckpointError } from '../../io/torch_ckpt/errors';
import { PyDict, describeValue } from '../../io/torch_ckpt/pickle';
import type { TensorRef } from '../../io/torch_ckpt/tensor_ref';
import { TorchCheckpointReader, countTensors, findStateDict } from '../../io/torch_ckpt/torch_load';
import { DTYPE_SIZE } from '../../tensor/native';
import { type Tensor, fromArray, runOp1 } from '../../tensor/tensor';
import { type GlobalArgs, CliError } from '../index';

interface ConvertArgs extends GlobalArgs {
  in: string;
  out: string;
  half: boolean;
  ema: boolean;
  strict: boolean;
  stateDict: string;
  ignoreKeys: string[];
  weightsFormat?: WeightsFormat;
}

/** Metadata of a checkpoint that describes training state, not the model: not carried into a converted quantized file. */
const TRAINING_METADATA = /^(format|config|state|ema|optimizer\..*|quant|quant_timesteps|quant_weights)$/;

/**
 * Rewrites a quantized checkpoint with its weights in the given format; the
 * weights written are those loadModel samples with (EMA preferred), the TDQ
 * table rebuilt from them. Returns the formats and the sizes of both files.
 */
export async function convertQuantizedCheckpoint(input: string, output: string, format: WeightsFormat): Promise<{ from: WeightsFormat; to: WeightsFormat; inBytes: number; outBytes: number }> {
  if (path.resolve(input) === path.resolve(output)) throw new CliError(`convert: the output ${output} is the input`);
  let loaded;
  try {
    loaded = await loadModel(input);
  } catch (e) {
    if (e instanceof ModelLoadError) throw new CliError(e.message);
    throw e;
  }
  try {
    const qm = loaded.quantized;
    if (!qm) throw new CliError(`convert --weights-format: ${input} is not a quantized checkpoint (no 'quant' metadata); quantize it with tdq-native calibrate`);
    const extra = Object.fromEntries(Object.entries(loaded.metadata).filter(([k]) => !TRAINING_METADATA.test(k)));
    await saveQuantizedCheckpoint(output, { config: loaded.config, model: qm, extraMetadata: { ...extra, converted_from: path.basename(input) }, weightsFormat: format });
    return { from: weightsFormatOf(loaded.metadata), to: format, inBytes: fs.statSync(input).size, outBytes: fs.statSync(output).size };
  } finally {
    loaded.dispose();
  }
}

export interface ConvertReport {
  input: string;
  output: string;
  format: 'zip' | 'legacy';
  stateDictKey: string | undefined;
  tensors: number;
  bytes: number;
  byDtype: Record<string, number>;
  /** Non-tensor entries of the state dict, not written. */
  dropped: string[];
  ignored: string[];
  /** Tensors outside the state dict (optimizer states, ...), not written. */
  otherTensors: number;
  /** The other top-level entries of a Lightning checkpoint (epoch, optimizer_states, ...), not written. */
  otherEntries: string[];
  ema?: { replaced: number; missing: string[]; unused: string[] };
  notes: string[];
}

/** Converts; returns what was done (the CLI prints it). */
export async function convertCheckpoint(
  input: string,
  output: string,
  opts: { half?: boolean; ema?: boolean; strict?: boolean; stateDict?: string; ignoreKeys?: string[] } = {},
): Promise<ConvertReport> {
  if (path.resolve(input) === path.resolve(output)) throw new CliError(`convert: the output ${output} is the input`);
  const reader = await TorchCheckpointReader.open(input, { strict: opts.strict });
  const tensors = new Map<string, Tensor>();
  try {
    const sd = findStateDict(reader, opts.stateDict ?? 'auto');
    const { stateDict: kept, dropped: ignored } = dropIgnoredKeys(sd.tensors, opts.ignoreKeys ?? []);
    let refs: Map<string, TensorRef> = kept;
    let ema: ConvertReport['ema'];
    if (opts.ema) {
      const r = applyEma(kept, input);
      refs = r.stateDict;
      ema = { replaced: r.replaced.length, missing: r.missing, unused: r.unused };
    }
    const byDtype: Record<string, number> = {};
    let bytes = 0;
    for (const [name, ref] of refs) {
      const d = await reader.read(ref, name);
      let t = fromArray(d.data, d.shape, d.dtype);
      if (opts.half && t.dtype === 'float32') {
        const h = runOp1('cast', [t], { dtype: 'float16' });
        t.dispose();
        t = h;
      }
      tensors.set(name, t);
      byDtype[t.dtype] = (byDtype[t.dtype] ?? 0) + 1;
      bytes += t.size * DTYPE_SIZE[t.dtype];
    }
    if (!tensors.size) throw new TorchCheckpointError(input, 'the state dict holds no tensors: nothing to convert');
    await writeSafetensors(output, tensors, {
      source: path.basename(input),
      converted_by: 'tdq-native convert',
      ema: opts.ema ? 'true' : 'false',
      half: opts.half ? 'true' : 'false',
    });
    return {
      input, output, format: reader.format, stateDictKey: sd.key, tensors: tensors.size, bytes, byDtype,
      dropped: sd.dropped, ignored, otherTensors: countTensors(reader.root) - sd.tensors.size, ema,
      otherEntries: sd.key !== undefined && reader.root instanceof PyDict ? [...reader.root.keys()].filter((k) => k !== sd.key).map((k) => describeValue(k)) : [], notes: reader.notes,
    };
  } finally {
    for (const t of tensors.values()) t.dispose();
    await reader.close();
  }
}

const LIST_MAX = 10;
function list(items: readonly string[]): string {
  return items.slice(0, LIST_MAX).map((s) => `    ${s}`).join('\n') + (items.length > LIST_MAX ? `\n    ... and ${items.length - LIST_MAX} more` : '');
}

export function formatConvertReport(r: ConvertReport): string {
  const lines = [
    `${r.input} (${r.format} format${r.stateDictKey ? `, state dict under '${r.stateDictKey}'` : ''}) -> ${r.output}`,
    `  tensors: ${r.tensors} (${Object.entries(r.byDtype).map(([d, n]) => `${n} ${d}`).join(', ')}), ${r.bytes} bytes of data`,
  ];
  if (r.ema) lines.push(`  EMA: ${r.ema.replaced} parameters replaced by their model_ema.* average; ${r.ema.missing.length} model.* keys without one${r.ema.unused.length ? `; ${r.ema.unused.length} model_ema.* buffers matched nothing` : ''}`);
  if (r.ignored.length) lines.push(`  ignored (--ignore-keys): ${r.ignored.length} tensors`);
  lines.push(`  dropped non-tensor entries of the state dict: ${r.dropped.length}${r.dropped.length ? `\n${list(r.dropped)}` : ''}`);
  if (r.otherEntries.length) lines.push(`  other top-level entries, not converted: ${r.otherEntries.join(', ')}`);
  if (r.otherTensors > 0) lines.push(`  not converted: ${r.otherTensors} tensors outside the state dict (optimizer states, callbacks)`);
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines.join('\n');
}

export const convertCommand: CommandModule<GlobalArgs, ConvertArgs> = {
  command: 'convert <in> <out>',
  describe: 'Convert a PyTorch checkpoint (.ckpt/.pt/.pth) to safetensors, safely (nothing in it is executed); or rewrite a quantized checkpoint with --weights-format',
  builder: (y) =>
    y
      .positional('in', { type: 'string', demandOption: true, describe: 'The torch.save checkpoint (zip or legacy format)' })
      .positional('out', { type: 'string', demandOption: true, describe: 'The .safetensors file to write' })
      .option('half', { type: 'boolean', default: false, describe: 'Write float tensors as float16' })
      .option('ema', { type: 'boolean', default: false, describe: 'Use the LitEma weights (model_ema.*) for model.* and drop model_ema.*' })
      .option('strict', { type: 'boolean', default: false, describe: 'Fail on any object the checkpoint asks to construct that is not a tensor or container' })
      .option('state-dict', { type: 'string', default: 'auto', describe: "Which top-level entry holds the state dict: 'auto' (Lightning's state_dict, else the whole file), 'root', or a key" })
      .option('ignore-keys', { type: 'string', array: true, default: [] as string[], describe: 'Leave out tensors whose name starts with one of these prefixes' })
      .option('weights-format', { alias: 'weights_format', choices: ['int', 'float'] as const, describe: 'IN is a quantized .safetensors checkpoint: write it with int8/int4 weight levels (int) or float32 weights (float)' }) as never,
  handler: async (a) => {
    if (!/\.safetensors$/i.test(a.out)) throw new CliError(`convert: the output must be a .safetensors file, got ${a.out}`);
    if (a.weightsFormat !== undefined) {
      if (a.half || a.ema || a.ignoreKeys.length) throw new CliError('convert --weights-format: --half, --ema and --ignore-keys apply to PyTorch checkpoints (the EMA of a quantized checkpoint is used when it has one)');
      const r = await convertQuantizedCheckpoint(a.in, a.out, a.weightsFormat);
      process.stdout.write(`${a.in} (${r.from} weights, ${r.inBytes} bytes) -> ${a.out} (${r.to} weights, ${r.outBytes} bytes, ${(r.outBytes / r.inBytes).toFixed(3)}x)\n`);
      return;
    }
    const r = await convertCheckpoint(a.in, a.out, { half: a.half, ema: a.ema, strict: a.strict, stateDict: a.stateDict, ignoreKeys: a.ignoreKeys });
    process.stdout.write(`${formatConvertReport(r)}\n`);
  },
};
