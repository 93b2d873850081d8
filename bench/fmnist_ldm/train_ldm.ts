// Trains the class-conditional latent UNet of configs/fmnist-ldm.yaml on the
// latents of the trained first stage (first_stage_config.params.ckpt_path,
// frozen), with the library's LatentDiffusion.lossOnImages: a posterior sample
// of each image, scale_by_std (1 / std of the first batch's latents, as
// upstream), uniform timesteps, eps-prediction L2. The class embedding is
// trained with the UNet (cond_stage_trainable); 10% of the labels are replaced
// by the "no class" label 10 so that the same model is also the unconditional
// one of classifier-free guidance. EMA of the UNet and class embedding as
// upstream's LitEma (decay min(0.9999, (1 + n) / (10 + n))).
//
//   node dist/bench/fmnist_ldm/train_ldm.js --run runs/fmnist-ldm [--minutes 28]
//        [--batch 64] [--lr 1e-3] [--out models/fmnist-ldm.safetensors]
//
// Every --every steps RUN/last.safetensors holds the raw weights, the EMA, Adam's
// moments, the step, the loader state and the generator state; running it again
// with the same --run resumes from there (same data order and noise stream).
//
// --out is ONE self-contained LatentDiffusion state dict under upstream keys:
// model.diffusion_model.* and cond_stage_model.* (the EMA weights), scale_factor,
// and the frozen first stage as first_stage_model.*, in float16 (--no-half:
// float32), so that
// `sample --base configs/fmnist-ldm.yaml --ckpt OUT` needs nothing else.
//
// This driver exists because `tdq-native train` could not train latent models
// yet when the model was trained; the CLI's trainer is the supported route.
import fs from 'node:fs';
import path from 'node:path';

import { FashionMnistDataset } from '../../src/data/fashion_mnist';
import { DataLoader } from '../../src/data/loader';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { createLatentDiffusion } from '../../src/models/latent';
import { loadLatentDiffusionConfig } from '../../src/models/latent_config';
import type { Module } from '../../src/nn/module';
import { Adam, optimizerStateFromTensors, optimizerStateToTensors } from '../../src/optim/adam';
import { clipGradNorm } from '../../src/optim/clip';
import { Ema } from '../../src/train/ema';
import { backward } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray, runOp1 } from '../../src/tensor/tensor';

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

const UNCOND = 10;
const P_UNCOND = 0.1;

async function main(): Promise<void> {
  const base = arg('base', 'configs/fmnist-ldm.yaml')!;
  const run = arg('run', 'runs/fmnist-ldm')!;
  const out = arg('out', 'models/fmnist-ldm.safetensors')!;
  const minutes = Number(arg('minutes', '28'));
  const maxSteps = Number(arg('steps', '1000000'));
  const batch = Number(arg('batch', '64'));
  const lr = Number(arg('lr', '1e-3'));
  const every = Number(arg('every', '200'));
  const planned = Number(arg('planned', '3000'));
  const warmup = 200;
  fs.mkdirSync(run, { recursive: true });

  const spec = loadLatentDiffusionConfig(base);
  const { model: ldm } = await createLatentDiffusion(spec, { gen: new Generator(0) });
  ldm.train();
  // The trained part: the UNet wrapper (model.*) and the class embedder (cond_stage_model.*).
  const trained: [string, Module][] = [['model', ldm.model], ['cond_stage_model', ldm.condStageModel!]];
  const params: [string, Tensor][] = trained.flatMap(([pre, m]) => m.namedParameters().map(([k, t]): [string, Tensor] => [`${pre}.${k}`, t]));
  const nParams = params.reduce((a, [, t]) => a + t.size, 0);
  console.log(`trainable parameters: ${nParams}`);
  const opt = new Adam(params, { lr });
  const emas = trained.map(([, m]) => new Ema(m, 0.9999, true));
  const ds = new FashionMnistDataset({ split: 'train', size: spec.firstStage.ddconfig.resolution, fit: { mode: 'pad', pad: 'zero' } });
  const loader = new DataLoader(ds, { batchSize: batch, seed: 4321, shuffle: true, dropLast: true });
  const gen = new Generator(2024);
  let step = 0;
  const ckpt = path.join(run, 'last.safetensors');
  if (fs.existsSync(ckpt)) {
    const { tensors, metadata } = await readSafetensors(ckpt);
    const st = JSON.parse(metadata.train);
    ldm.loadStateDict(new Map([...tensors].filter(([k]) => !k.startsWith('optimizer.') && !k.startsWith('ema.'))), { strict: false });
    trained.forEach(([pre], i) => {
      const m = new Map<string, Tensor>();
      for (const [k, t] of tensors) if (k.startsWith(`ema.${pre}.`)) m.set(k.slice(`ema.${pre}.`.length), t);
      emas[i].load(m);
      emas[i].numUpdates = st.emaUpdates;
    });
    opt.loadState(optimizerStateFromTensors(tensors, metadata));
    for (const t of tensors.values()) t.dispose();
    step = st.step;
    loader.setState(st.loader);
    gen.setState(st.gen);
    console.log(`resumed from ${ckpt} at step ${step}, scale_factor ${await ldm.scaleFactorValue()}`);
  } else {
    const b = loader.next();
    const sf = await ldm.initScaleByStd(b.x, gen);
    b.x.dispose();
    b.y?.dispose();
    console.log(`scale_factor = 1 / std(z) = ${sf}`);
  }
  const logFile = path.join(run, 'log.csv');
  if (!fs.existsSync(logFile)) fs.writeFileSync(logFile, 'step,seconds,loss,grad_norm,lr\n');
  const secFile = path.join(run, 'seconds');
  const prevSeconds = step > 0 && fs.existsSync(secFile) ? Number(fs.readFileSync(secFile, 'utf8')) : 0;
  const t0 = Date.now();
  const lrAt = (s: number) => (s < warmup ? (lr * (s + 1)) / warmup : lr * (0.1 + 0.45 * (1 + Math.cos(Math.PI * Math.min(1, (s - warmup) / Math.max(1, planned - warmup))))));

  const save = async () => {
    const o = optimizerStateToTensors(opt.state());
    const tensors = new Map<string, Tensor>([...ldm.stateDict()].filter(([k]) => !k.startsWith('first_stage_model.')));
    trained.forEach(([pre], i) => {
      for (const [k, t] of emas[i].shadow) tensors.set(`ema.${pre}.${k}`, t);
    });
    for (const [k, t] of o.tensors) tensors.set(k, t);
    const meta = { ...o.metadata, train: JSON.stringify({ step, loader: loader.state(), gen: gen.state(), emaUpdates: emas[0].numUpdates }) };
    await writeSafetensors(ckpt, tensors, meta);
    fs.writeFileSync(secFile, String(prevSeconds + (Date.now() - t0) / 1000));
  };

  let acc = { loss: 0, gn: 0, n: 0 };
  while (step < maxSteps && (Date.now() - t0) / 60000 < minutes) {
    const b = loader.next();
    const labels = Int32Array.from(b.labels, (l) => (gen.randint(1_000_000) < P_UNCOND * 1_000_000 ? UNCOND : l));
    const y = fromArray(labels, [labels.length], 'int32');
    for (const g of opt.paramGroups) g.lr = lrAt(step);
    const [loss, gn] = tidy(() => {
      const r = ldm.lossOnImages(b.x, { class_label: y }, gen);
      backward(r.loss);
      return [r.loss, clipGradNorm(params.map(([, t]) => t), 1.0)];
    });
    [b.x, b.y, y].forEach((t) => t?.dispose());
    opt.step();
    opt.zeroGrad();
    trained.forEach(([, m], i) => emas[i].update(m));
    const [l, g] = await Promise.all([loss.item(), gn.item()]);
    loss.dispose();
    gn.dispose();
    if (!Number.isFinite(l)) throw new Error(`non-finite loss at step ${step}`);
    acc = { loss: acc.loss + l, gn: acc.gn + g, n: acc.n + 1 };
    step++;
    if (step % 50 === 0 || step === 1) {
      const sec = prevSeconds + (Date.now() - t0) / 1000;
      const row = [step, sec.toFixed(1), (acc.loss / acc.n).toFixed(4), (acc.gn / acc.n).toFixed(3), lrAt(step - 1).toExponential(2)];
      fs.appendFileSync(logFile, row.join(',') + '\n');
      console.log(row.join(','));
      acc = { loss: 0, gn: 0, n: 0 };
    }
    if (step % every === 0) await save();
  }
  await save();
  // The shipped file: the EMA weights in place of the raw ones, the first stage embedded.
  trained.forEach(([, m], i) => emas[i].swapInto(m));
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  // float16 halves the shipped file (the loader converts to float32); scale_factor stays float32.
  const half = !process.argv.includes('--no-half');
  const final = [...ldm.stateDict()].map(([k, t]): [string, Tensor] => [k, half && k !== 'scale_factor' ? runOp1('cast', [t], { dtype: 'float16' }) : t]);
  await writeSafetensors(out, final, {
    format: 'pt', source: 'tdq-native bench/fmnist_ldm/train_ldm.ts', steps: String(step), config: 'configs/fmnist-ldm.yaml',
    weights: 'EMA (LitEma decay min(0.9999, (1+n)/(10+n))) of model.diffusion_model.* and cond_stage_model.*',
  });
  console.log(`wrote ${out} after ${step} steps, scale_factor ${await ldm.scaleFactorValue()}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
