// `tdq-native calibrate`: post-training quantization. Loads a full-precision
// checkpoint, runs a few sampling trajectories to gather activation
// statistics per timestep, sets every step size (MSE-optimal by default),
// fits the TDQ modules, builds the step table, and writes a quantized
// checkpoint that `sample` and `inspect` read. No training.
import fs from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';

import { ConfigError } from '../../config/load';
import { writeSafetensors } from '../../io/safetensors';
import { ClassEmbedder } from '../../models/conditioning';
import { type Denoiser, scheduleFromConfig } from '../../models/diffusion';
import type { LatentDenoiser } from '../../models/latent';
import { type LoadedLatentModel, isLatentDiffusionConfigFile, loadLatentModel } from '../../models/load_latent';
import type { Tensor } from '../../tensor/tensor';
import { LDM_CHECKPOINT_FORMAT } from '../../train/subject';
import { ModelLoadError, loadModel } from '../../models/load';
import { calibrateWithReport } from '../../quant/calibrate';
import { type QuantConfig, QuantConfigError, describeConfig, resolveQuantConfig } from '../../quant/config';
import { type WeightsFormat, saveQuantizedCheckpoint } from '../../quant/weights_format';
import { type GlobalArgs, CliError } from '../index';
import { checkCount, checkMemory, checkSamplerFlags, maxMemoryOption, cliDevice, deviceOption, precisionOption, peekModelConfig } from './preflight';
import type { DeviceSpec, Precision } from '../../tensor/device';
import type { Device } from '../../tensor/native';

interface CalibrateArgs extends GlobalArgs {
  ckpt: string;
  config?: string;
  out?: string;
  nBitW: number;
  nBitA: number;
  useDynamic: boolean;
  staticMethod: 'lsq' | 'pact';
  method: 'auto' | 'mse' | 'minmax' | 'percentile';
  percentile?: number;
  nSamples: number;
  batchSize: number;
  sampler: 'ddim' | 'plms' | 'dpmpp' | 'ddpm';
  steps?: number;
  seed: number;
  maxMemory?: string;
  keepFp?: string[];
  quantizeAttention: boolean;
  fitIters: number;
  ema: boolean;
  weightsFormat: WeightsFormat;
  device: DeviceSpec;
  precision: Precision;
}

/** The quantization config of the command-line flags. */
export function quantConfigFromArgs(a: Pick<CalibrateArgs, 'nBitW' | 'nBitA' | 'useDynamic' | 'staticMethod' | 'keepFp' | 'quantizeAttention'>): QuantConfig {
  try {
    return resolveQuantConfig({
      nBitW: a.nBitW, nBitA: a.nBitA, useDynamic: a.useDynamic, staticMethod: a.staticMethod,
      keepFp: a.keepFp && a.keepFp.length ? a.keepFp : 'paper', quantizeAttention: a.quantizeAttention,
    });
  } catch (e) {
    if (e instanceof QuantConfigError) throw new CliError(e.message.replace(/nBitW/, '--n-bit-w').replace(/nBitA/, '--n-bit-a'));
    throw e;
  }
}

export const calibrateCommand: CommandModule<GlobalArgs, CalibrateArgs> = {
  command: 'calibrate',
  describe: 'post-training quantization of a full-precision checkpoint (static LSQ or TDQ steps from calibration)',
  builder: (y) =>
    y
      .option('ckpt', { type: 'string', demandOption: true, describe: 'full-precision checkpoint (.safetensors)' })
      .option('config', { alias: 'base', type: 'string', describe: 'model YAML, for weight files without a config in their metadata; an upstream LatentDiffusion config (--base) calibrates its UNet in latent space' })
      .option('out', { alias: 'o', type: 'string', describe: 'quantized checkpoint to write (default: <ckpt>-w<W>a<A>-<tdq|lsq>.safetensors)' })
      .option('n-bit-w', { alias: 'n_bit_w', type: 'number', default: 8, describe: 'weight bits (2..8), per output channel' })
      .option('n-bit-a', { alias: 'n_bit_a', type: 'number', default: 8, describe: 'activation bits (2..8), per tensor' })
      .option('use-dynamic', { alias: 'use_dynamic', type: 'boolean', default: false, describe: 'TDQ: activation steps from the timestep (else one static step per layer)' })
      .option('static-method', { alias: 'static_method', choices: ['lsq', 'pact'] as const, default: 'lsq' as const, describe: 'static activation quantizer' })
      .option('method', { choices: ['auto', 'mse', 'minmax', 'percentile'] as const, default: 'auto' as const, describe: 'step size from the statistics (auto: min-max at 8-bit activations, percentile below; see src/quant/README.md)' })
      .option('percentile', { type: 'number', defaultDescription: '99.99', describe: 'for --method percentile (and auto below 8-bit activations); an error with mse / minmax' })
      .option('n-samples', { alias: ['n_samples', 'n'], type: 'number', default: 16, describe: 'calibration trajectories' })
      .option('batch-size', { alias: 'batch_size', type: 'number', default: 16, describe: 'trajectories per batch' })
      .option('sampler', { choices: ['ddim', 'plms', 'dpmpp', 'ddpm'] as const, default: 'ddim' as const, describe: 'sampler of the trajectories' })
      .option('steps', { alias: ['custom-steps', 'custom_steps'], type: 'number', defaultDescription: '50', describe: 'sampler steps (each a calibration timestep; an error with ddpm)' })
      .option('max-memory', { alias: 'max_memory', ...maxMemoryOption })
      .option('device', deviceOption)
      .option('precision', precisionOption)
      .option('seed', { type: 'number', default: 0, describe: 'noise seed of the trajectories' })
      .option('keep-fp', { alias: 'keep_fp', type: 'string', array: true, describe: "layers kept in full precision (names or '*' patterns; default: the paper's)" })
      .option('quantize-attention', { alias: 'quantize_attention', type: 'boolean', default: false, describe: 'also quantize the q/k/v inputs of the attention matmuls' })
      .option('fit-iters', { alias: 'fit_iters', type: 'number', default: 800, describe: 'Adam iterations fitting the TDQ modules' })
      .option('ema', { type: 'boolean', default: true, describe: 'quantize the EMA weights of a training checkpoint' })
      .option('weights-format', { alias: 'weights_format', choices: ['int', 'float'] as const, default: 'int' as const, describe: 'quantized weights as int8 levels (int4 two per byte at <= 4 bits) with their steps, or float32 (src/quant/weights_format.ts)' })
      .example('$0 calibrate --ckpt models/fmnist-small.safetensors --n-bit-w 4 --n-bit-a 8 --use-dynamic', 'PTQ with TDQ, W4A8')
      .example('$0 calibrate --ckpt fp.safetensors --n_bit_w 8 --n_bit_a 4 --method percentile', 'static PTQ, W8A4, percentile ranges')
      .example('$0 calibrate --base configs/fmnist-ldm.yaml --ckpt ldm.safetensors --n-bit-w 8 --n-bit-a 4 --use-dynamic', 'PTQ of a latent diffusion model\'s UNet (trajectories in latent space, class-conditioned)') as unknown as Argv<CalibrateArgs>,
  handler: async (a) => {
    if (!fs.existsSync(a.ckpt)) throw new CliError(`checkpoint not found: ${a.ckpt}`);
    checkCount('n-samples', a.nSamples);
    checkCount('batch-size', a.batchSize);
    checkCount('fit-iters', a.fitIters, 10_000_000);
    if (a.steps !== undefined) checkCount('steps', a.steps);
    if (!Number.isSafeInteger(a.seed) || a.seed < 0) throw new CliError(`--seed must be a non-negative integer, got ${a.seed}`);
    if (a.percentile !== undefined) {
      if (!(a.percentile > 0 && a.percentile <= 100)) throw new CliError(`--percentile must lie in (0, 100], got ${a.percentile}`);
      if (a.method === 'mse' || a.method === 'minmax') throw new CliError(`--percentile applies to --method percentile (or auto below 8-bit activations), not --method ${a.method}`);
    }
    if (a.config && isLatentDiffusionConfigFile(a.config)) {
      return calibrateLatent(a, quantConfigFromArgs(a), cliDevice(a));
    }
    const peeked = await peekModelConfig(a.ckpt, a.config);
    let steps = a.steps ?? 50;
    if (peeked) {
      steps = checkSamplerFlags({ sampler: a.sampler, steps: a.steps, stepsFlag: 'steps', layoutFlag: false }, (peeked.model.params as { timesteps: number }).timesteps);
      checkMemory(`calibrating with batches of ${Math.min(a.batchSize, a.nSamples)}`, peeked, Math.min(a.batchSize, a.nSamples), 0, a.maxMemory);
    }
    const qcfg = quantConfigFromArgs(a);
    const device = cliDevice(a);
    let loaded;
    try {
      loaded = await loadModel(a.ckpt, { config: a.config, noEma: !a.ema, expect: 'float' });
    } catch (e) {
      if (e instanceof ModelLoadError) throw new CliError(e.message.replace(/a full-precision checkpoint is needed$/, 'calibrate a full-precision checkpoint'));
      throw e;
    }
    const { config, model: unet } = loaded;
    unet.to(device); // the trajectories run there; the fit and the saved file are the same either way
    const p = config.model.params;
    const schedule = scheduleFromConfig(p);
    console.log(`tdq-native: calibrating ${describeConfig(qcfg)} on ${a.nSamples} ${a.sampler} trajectories of ${steps} steps (${a.method})`);
    const t0 = Date.now();
    let lastPct = -1;
    const { model: qm, report } = await calibrateWithReport(unet, qcfg, {
      schedule, sampler: a.sampler, steps: a.sampler === 'ddpm' ? undefined : a.steps ?? 50, nSamples: a.nSamples, batchSize: a.batchSize, seed: a.seed,
      method: a.method, percentile: a.percentile ?? 99.99, sampleShape: [p.channels, p.image_size, p.image_size], fitIters: a.fitIters,
      onProgress: (phase, done, total) => {
        const pct = Math.floor((100 * done) / total);
        if (phase === 'sampling' && pct >= lastPct + 10 && process.stderr.isTTY) process.stderr.write(`  sampling ${pct}%\n`);
        if (phase === 'sampling') lastPct = Math.max(lastPct, pct - (pct % 10));
        if (phase === 'fitting' && done === 0 && qcfg.useDynamic) console.log('tdq-native: fitting the TDQ modules to the per-timestep steps');
      },
    });
    try {
      if (qcfg.useDynamic) qm.buildTable();
      const out = a.out ?? a.ckpt.replace(/\.safetensors$/, '') + `-w${qcfg.nBitW}a${qcfg.nBitA}-${qcfg.useDynamic ? 'tdq' : qcfg.staticMethod}.safetensors`;
      fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
      await saveQuantizedCheckpoint(out, {
        config,
        model: qm,
        weightsFormat: a.weightsFormat,
        extraMetadata: {
          quant_calibration: JSON.stringify({ method: a.method, sampler: a.sampler, steps: a.sampler === 'ddpm' ? steps : a.steps ?? 50, nSamples: a.nSamples, seed: a.seed, source: path.basename(a.ckpt) }),
        },
      });
      const fits = report.quantizers.map((q) => q.fitRmsLog).filter((v): v is number => v !== undefined);
      const fitText = fits.length ? `; TDQ fit: RMS log-step error ${(fits.reduce((s, v) => s + v, 0) / fits.length).toFixed(3)} mean, ${Math.max(...fits).toFixed(3)} worst` : '';
      const unsigned = report.quantizers.filter((q) => !q.range.signed).length;
      console.log(`tdq-native: ${qm.layers.size} layers quantized, ${qm.fpLayers.length} kept in full precision; ${report.quantizers.length} activation quantizers (${unsigned} unsigned)${fitText}`);
      console.log(`tdq-native: wrote ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s (inspect it with: tdq-native inspect --ckpt ${out})`);
    } finally {
      qm.dispose();
    }
  },
};

/**
 * PTQ of a LatentDiffusion's UNet: the calibration trajectories run in latent
 * space through the model's own schedule, each with a class drawn from the
 * cond stage's classes (its context is the UNet's cross-attention input);
 * the first and cond stages stay full precision. Writes the whole LDM with
 * upstream's keys and the quantization metadata, which `sample --base --ckpt`
 * (loadLatentModel) reads back as a quantized LDM.
 */
async function calibrateLatent(a: CalibrateArgs, qcfg: QuantConfig, device: Device): Promise<void> {
  let loaded: LoadedLatentModel;
  try {
    loaded = await loadLatentModel(a.ckpt, { config: a.config!, noEma: !a.ema });
  } catch (e) {
    if (e instanceof ModelLoadError || e instanceof ConfigError) throw new CliError(e.message);
    throw e;
  }
  const ldm = loaded.model;
  ldm.to(device); // the whole LDM: the trajectories and the cond stage's contexts run there
  try {
    if (loaded.report.quantized) throw new CliError(`${a.ckpt} is already quantized: calibrate a full-precision checkpoint`);
    const steps = a.sampler === 'ddpm' ? undefined : a.steps ?? 50;
    if (a.sampler === 'ddpm' && a.steps !== undefined) throw new CliError('--steps does not apply to --sampler ddpm (it runs every timestep)');
    const cs = ldm.condStageModel;
    if (ldm.conditioningKey !== null && !(cs instanceof ClassEmbedder)) throw new CliError(`calibrate: the cond stage ${cs?.constructor.name} is not a class embedder; only class-conditional and unconditional LDMs calibrate`);
    const conditioning = cs instanceof ClassEmbedder ? { numClasses: cs.nClasses, context: (y: Tensor) => ldm.getLearnedConditioning({ class_label: y }) } : undefined;
    console.log(`tdq-native: calibrating the UNet of a latent diffusion model ${describeConfig(qcfg)} on ${a.nSamples} ${a.sampler} trajectories of ${steps ?? ldm.numTimesteps} steps in latent space (${a.method}${conditioning ? `, classes drawn from 0..${conditioning.numClasses - 1}` : ''})`);
    const t0 = Date.now();
    const { model: qm, report } = await calibrateWithReport(ldm.model.diffusionModel as unknown as Denoiser, qcfg, {
      schedule: ldm.schedule, sampler: a.sampler, steps, nSamples: a.nSamples, batchSize: a.batchSize, seed: a.seed,
      method: a.method, percentile: a.percentile ?? 99.99, sampleShape: [ldm.channels, ldm.imageSize, ldm.imageSize], fitIters: a.fitIters, conditioning,
    });
    ldm.model.replaceDiffusionModel(qm as unknown as LatentDenoiser);
    if (qcfg.useDynamic) qm.buildTable();
    const out = a.out ?? a.ckpt.replace(/\.(safetensors|ckpt|pt|pth)$/, '') + `-w${qcfg.nBitW}a${qcfg.nBitA}-${qcfg.useDynamic ? 'tdq' : qcfg.staticMethod}.safetensors`;
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    await writeSafetensors(out, new Map(ldm.stateDict()), {
      format: LDM_CHECKPOINT_FORMAT,
      ...qm.checkpointMetadata(),
      quant_calibration: JSON.stringify({ method: a.method, sampler: a.sampler, steps: steps ?? ldm.numTimesteps, nSamples: a.nSamples, seed: a.seed, source: path.basename(a.ckpt), latent: true }),
    });
    console.log(`tdq-native: ${qm.layers.size} UNet layers quantized, ${qm.fpLayers.length} kept in full precision; ${report.quantizers.length} activation quantizers; first and cond stages in full precision`);
    console.log(`tdq-native: wrote ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s (sample it with: tdq-native sample --base ${a.config} --ckpt ${out})`);
  } finally {
    loaded.dispose();
  }
}
