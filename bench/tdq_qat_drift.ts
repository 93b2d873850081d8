// How far QAT models drift from the FP model: teacher-forced eps-MSE along
// the FP model's DDIM trajectories and x0-MSE of their own samples from the
// same noise (bench/tdq_common.ts), beside the two starting points of the
// same bits: QAT's initialisation (the authors' statistics rule, TDQ at the
// static step) and PTQ with the 'auto' steps.
//
//   node dist/bench/tdq_qat_drift.js --bits W8A8 [--ckpt models/fmnist-small.safetensors] \
//     [--seeds 0,1] [--n 16] [--eps-samples 8] [--calib-samples 8] name=RUN/model.safetensors ...
import { parseArgs } from 'node:util';

import { loadModel } from '../src/models/load';
import { sample } from '../src/diffusion/samplers/index';
import { calibrate } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import type { QuantizedModel } from '../src/quant/quantize_model';
import { epsMsePerStep, freshUNet, loadFp, mean, mse, reference } from './tdq_common';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2), strict: true, allowPositionals: true,
    options: { ckpt: { type: 'string' }, bits: { type: 'string' }, seeds: { type: 'string' }, n: { type: 'string' }, 'eps-samples': { type: 'string' }, 'calib-samples': { type: 'string' } },
  });
  const m = /^W(\d)A(\d)$/i.exec(values.bits ?? '');
  if (!m) throw new Error('--bits W8A8 (the bits of the QAT models) is required');
  const [w, x] = [Number(m[1]), Number(m[2])];
  const seeds = (values.seeds ?? '0,1').split(',').map(Number);
  const n = Number(values.n ?? 16), epsSamples = Number(values['eps-samples'] ?? 8), calibSamples = Number(values['calib-samples'] ?? 8);
  const fp = await loadFp(values.ckpt ?? 'models/fmnist-small.safetensors');
  const fpu = await freshUNet(fp);
  const refs = [];
  for (const seed of seeds) refs.push(await reference(fpu, fp, seed, { steps: 25, nSamples: n, epsSamples }));
  fpu.dispose();
  const cfg = resolveQuantConfig({ nBitW: w, nBitA: x, useDynamic: true });
  const calibrated = async (method: 'stats' | 'auto') => {
    const q = await calibrate(await freshUNet(fp), cfg, { schedule: fp.schedule, steps: 50, nSamples: calibSamples, seed: 0, method, tdqInit: method === 'stats' ? 'constant' : 'fit', sampleShape: fp.shape });
    q.buildTable();
    q.useTable(true);
    return q;
  };
  const models: [string, () => Promise<QuantizedModel>][] = [
    ['QAT init (stats, TDQ at the static step)', () => calibrated('stats')],
    ['PTQ (auto steps, TDQ fit)', () => calibrated('auto')],
    ...positionals.map((p): [string, () => Promise<QuantizedModel>] => {
      const [name, file] = p.split('=');
      if (!name || !file) throw new Error(`expected name=file, got '${p}'`);
      return [name, async () => {
        const q = (await loadModel(file, { config: fp.config })).quantized;
        if (!q) throw new Error(`${file}: not a quantized checkpoint`);
        return q;
      }];
    }),
  ];
  console.log(`| W${w}A${x} | eps-MSE (seeds ${seeds.join(', ')}) | x0-MSE |`);
  console.log('|---|---|---|');
  for (const [name, make] of models) {
    const qm = await make();
    qm.eval();
    const eps: number[] = [], x0: number[] = [];
    for (const [i, seed] of seeds.entries()) {
      eps.push(mean(epsMsePerStep(qm, refs[i], fp)));
      const out = await sample((xx, t) => qm.forward(xx, t), { sampler: 'ddim', steps: 25, schedule: fp.schedule, shape: [n, ...fp.shape], seed, clipDenoised: true });
      x0.push(mse(Float32Array.from(out.dataSync() as Float32Array), refs[i].x0));
      out.dispose();
    }
    console.log(`| ${name} | ${eps.map((v) => v.toExponential(2)).join(', ')} | ${x0.map((v) => v.toExponential(2)).join(', ')} |`);
    qm.dispose();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack ?? e.message : e);
  process.exit(1);
});
