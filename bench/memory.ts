// Engine peak memory of fmnist-small training steps with and without the
// stream's queue cap (native().setMaxQueuedBytes): the cap bounds how many
// outputs queued-but-not-run ops allocate ahead of the engine.
//   node dist/bench/memory.js [--batch 64] [--steps 3]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { buildUNet, PixelDiffusion } from '../src/models/diffusion';
import { backward } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { tidy } from '../src/tensor/scope';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

async function run(capMiB: number, batch: number, steps: number): Promise<{ peak: number; msPerStep: number }> {
  native().setMaxQueuedBytes(capMiB * 2 ** 20);
  const { config } = loadConfig(path.join(packageRoot, 'configs', 'fmnist-small.yaml'));
  const unet = buildUNet(config.model.params.unet_config, new Generator(0));
  const d = new PixelDiffusion(config.model, unet);
  const gen = new Generator(1);
  native().resetPeakMemory();
  const t0 = Date.now();
  for (let i = 0; i < steps; ++i) {
    const x = gen.randn([batch, 1, 32, 32]);
    const l = tidy(() => {
      const { loss } = d.trainingLoss(x, gen);
      backward(loss);
      return loss;
    });
    await l.item();
    unet.zeroGrad();
    x.dispose();
    l.dispose();
  }
  const res = { peak: native().memory().peakBytes / 2 ** 20, msPerStep: (Date.now() - t0) / steps };
  unet.dispose();
  return res;
}

async function main(): Promise<void> {
  const batch = arg('batch', 64), steps = arg('steps', 3);
  const rows: string[] = [];
  for (const cap of [0, 256, 64]) {
    const r = await run(cap, batch, steps);
    rows.push(`| ${cap === 0 ? 'none' : `${cap} MiB`} | ${r.peak.toFixed(0)} | ${r.msPerStep.toFixed(0)} |`);
    console.log(rows[rows.length - 1]);
  }
  const out = [
    '# Training peak memory and the stream queue cap',
    '',
    `- command: \`node dist/bench/memory.js --batch ${batch} --steps ${steps}\``,
    `- date: ${new Date().toISOString().slice(0, 10)}, machine: ${os.cpus()[0]?.model?.trim()}, ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(1)}`,
    `- model: configs/fmnist-small.yaml UNet, batch ${batch}, forward + backward (no optimizer), engine peak = native().memory().peakBytes`,
    '',
    '| queue cap | engine peak MiB | ms / step |',
    '|---|---:|---:|',
    ...rows,
    '',
  ].join('\n');
  const file = path.join(packageRoot, 'bench', 'results', 'memory-cpu.md');
  fs.writeFileSync(file, out);
  console.log(`wrote ${file}`);
}

void main();
