// Engine peak memory and speed of fmnist-small training steps with and
// without the host buffer cache (native().setHostCacheBytes: freed large
// buffers kept for reuse instead of going back to the OS, which then
// page-faults them in again). The stream's former queue cap is gone: op
// outputs are allocated when the op runs, so queued ops hold no memory.
//   node dist/bench/memory.js [--batch 64] [--steps 4] [--out bench/results/memory-cpu.md]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadConfig } from '../src/config';
import { buildUNet, PixelDiffusion } from '../src/models/diffusion';
import { backward } from '../src/tensor/autograd';
import { native, packageRoot } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { tidy } from '../src/tensor/scope';
import { benchArgs, commonOptions } from './args';

const USAGE = 'node dist/bench/memory.js [--batch 64] [--steps 4] [--out bench/results/memory-cpu.md]';
const OPTIONS = {
  batch: { type: 'string', value: 'N', default: '64', help: 'training batch size' },
  steps: { type: 'string', value: 'N', default: '4', help: 'training steps per cache setting' },
  out: commonOptions.report('memory-cpu.md'),
} as const;

interface Row { peak: number; cached: number; msPerStep: number }

async function run(cacheMiB: number, batch: number, steps: number): Promise<Row> {
  native().setHostCacheBytes(cacheMiB * 2 ** 20);
  native().releaseHostCache();
  const { config } = loadConfig(path.join(packageRoot, 'configs', 'fmnist-small.yaml'));
  const unet = buildUNet(config.model.params.unet_config, new Generator(0));
  const d = new PixelDiffusion(config.model, unet);
  const gen = new Generator(1);
  native().resetPeakMemory();
  let t0 = Date.now();
  for (let i = 0; i < steps; ++i) {
    if (i === 1) t0 = Date.now(); // the first step fills the cache
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
  const m = native().memory();
  const res = { peak: m.peakBytes / 2 ** 20, cached: m.cachedBytes / 2 ** 20, msPerStep: (Date.now() - t0) / Math.max(1, steps - 1) };
  unet.dispose();
  return res;
}

async function main(): Promise<void> {
  const { batch, steps, out: file } = benchArgs(USAGE, OPTIONS, (a) => ({ batch: a.int('batch', 1), steps: a.int('steps', 1), out: path.resolve(a.str('out')) }));
  const rows: string[] = [];
  for (const cache of [0, 2048]) {
    const r = await run(cache, batch, steps);
    rows.push(`| ${cache === 0 ? 'off' : `${cache} MiB`} | ${r.peak.toFixed(0)} | ${r.cached.toFixed(0)} | ${r.msPerStep.toFixed(0)} |`);
    console.log(rows[rows.length - 1]);
  }
  const out = [
    '# Training peak memory and the host buffer cache',
    '',
    `- command: \`node dist/bench/memory.js --batch ${batch} --steps ${steps}\``,
    '- op outputs are allocated by the engine thread when their op runs (no queue cap: queued ops hold no output memory)',
    `- date: ${new Date().toISOString().slice(0, 10)}, machine: ${os.cpus()[0]?.model?.trim()}, ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(1)}`,
    `- model: configs/fmnist-small.yaml UNet, batch ${batch}, forward + backward (no optimizer); engine peak = native().memory().peakBytes (live tensors, not the cache); cached = the host cache after the run; ms / step over the steps after the first`,
    '',
    '| host cache | engine peak MiB | cached MiB | ms / step |',
    '|---|---:|---:|---:|',
    ...rows,
    '',
  ].join('\n');
  fs.writeFileSync(file, out);
  console.log(`wrote ${file}`);
}

void main();
