// `tdq-native train`: full-precision training from a YAML config, or
// quantization-aware training (--n-bit-w / --n-bit-a / --use-dynamic) from a
// full-precision checkpoint. Ctrl-C stops after the current step and writes
// a checkpoint; --resume continues exactly.
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';

import { loadConfig } from '../../config';
import { train } from '../../train/trainer';
import { type GlobalArgs, CliError } from '../index';

export interface TrainArgs extends GlobalArgs {
  base: string;
  ckpt?: string;
  resume?: string;
  name?: string;
  maxSteps?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  logdir: string;
  dataDir?: string;
  set: string[];
}

export const trainCommand: CommandModule<GlobalArgs, TrainArgs> = {
  command: 'train',
  describe: 'train a diffusion model from a YAML config',
  builder: (y) =>
    y
      .option('base', { alias: 'b', type: 'string', demandOption: true, describe: 'YAML config (see configs/)' })
      .option('ckpt', { type: 'string', describe: 'start from these weights (e.g. a full-precision model for QAT)' })
      .option('resume', { alias: 'r', type: 'string', describe: 'continue a run: its folder or a checkpoint file' })
      .option('name', { alias: 'n', type: 'string', describe: 'run name (folder under --logdir); default: the config file name' })
      .option('max-steps', { alias: 'max_steps', type: 'number', describe: 'overrides training.max_steps' })
      .option('batch-size', { alias: 'batch_size', type: 'number', describe: 'overrides training.batch_size' })
      .option('lr', { type: 'number', describe: 'overrides model.base_learning_rate' })
      .option('seed', { type: 'number', describe: 'overrides training.seed' })
      .option('logdir', { alias: 'l', type: 'string', default: 'runs', describe: 'parent folder of run folders' })
      .option('data-dir', { alias: 'data_dir', type: 'string', describe: 'dataset folder (Fashion-MNIST idx files or PNG root)' })
      .option('set', { type: 'string', array: true, default: [], describe: 'config override key.path=value (repeatable)' })
      .example('$0 train --base configs/fmnist-small.yaml --max-steps 2000', 'train the small Fashion-MNIST model')
      .example('$0 train --resume runs/fmnist-small', 'continue an interrupted run exactly')
      .example('$0 train --base configs/fmnist-small.yaml --set training.batch_size=32 --set model.params.unet_config.params.dropout=0', 'override config keys') as unknown as Argv<TrainArgs>,
  handler: async (a) => {
    const overrides = [...a.set];
    if (a.maxSteps !== undefined) overrides.push(`training.max_steps=${a.maxSteps}`);
    if (a.batchSize !== undefined) overrides.push(`training.batch_size=${a.batchSize}`);
    if (a.lr !== undefined) overrides.push(`model.base_learning_rate=${a.lr}`);
    if (a.seed !== undefined) overrides.push(`training.seed=${a.seed}`);
    const { config, warnings } = loadConfig(a.base, { overrides });
    for (const w of warnings) console.warn(`tdq-native: ${w}`);
    const name = a.name ?? path.basename(a.base).replace(/\.ya?ml$/, '');
    const outDir = config.training.out_dir ?? path.join(a.logdir, name);
    if (a.resume && a.ckpt) throw new CliError('--resume and --ckpt exclude each other: --resume continues a run, --ckpt starts one from weights');
    const abort = new AbortController();
    let interrupts = 0;
    const onSigint = () => {
      if (++interrupts > 1) process.exit(130);
      console.error('tdq-native: stopping after this step and writing a checkpoint (Ctrl-C again to quit at once)');
      abort.abort();
    };
    process.on('SIGINT', onSigint);
    try {
      console.log(`tdq-native: training ${name} -> ${outDir}`);
      const r = await train({ config, outDir, resume: a.resume, initCheckpoint: a.ckpt, dataDir: a.dataDir, signal: abort.signal });
      console.log(`tdq-native: ${r.interrupted ? 'stopped' : 'finished'} at step ${r.step}, loss ${r.lastLoss.toFixed(5)}; checkpoint ${r.checkpoint}${r.exported ? `; model ${r.exported}` : ''}`);
      if (r.interrupted) process.exitCode = 130;
    } finally {
      process.off('SIGINT', onSigint);
    }
  },
};
