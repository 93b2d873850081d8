// Trains the first stage of the shipped Fashion-MNIST latent diffusion model:
// the KL autoencoder of configs/fmnist-kl-f4.yaml (32x32x1 -> 8x8x4) with
// AutoencoderKLLoss (L1 + learned scalar logvar + kl_weight * KL; no LPIPS and
// no discriminator: their VGG / discriminator weights are not available here),
// Adam, and the Fashion-MNIST training split padded to 32 x 32.
//
//   node dist/bench/fmnist_ldm/train_ae.js --run runs/fmnist-kl-f4 [--minutes 30]
//        [--steps N] [--batch 32] [--lr 1e-3] [--out models/fmnist-kl-f4.safetensors]
//
// Every --every steps it writes RUN/last.safetensors (weights incl. loss.logvar,
// Adam moments, step, the loader's (epoch, position, seed) and the posterior
// sampling generator's state) and appends to RUN/log.csv; run it again with the
// same --run to resume from there. The resume restores the data order and the
// noise stream exactly; it is not bit-exact only in that the learning-rate
// schedule is recomputed from the step (which is the same thing) and the
// native reductions may differ across thread counts.
//
// At the end (the step or time budget) it writes --out with the model's keys
// only (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*: upstream's
// first-stage layout, without loss.logvar) in float16 (--no-half: float32).
//
// Learning rate: upstream sets base_learning_rate 4.5e-6 * batch * GPUs
// (1.4e-4 at batch 32) for 80M-parameter autoencoders trained for days; this one
// has 3.5M parameters and half an hour of CPU (under 1000 steps), so it takes
// the common Adam rate 1e-3 (betas 0.5, 0.9 as upstream's autoencoders) with a
// 100-step warm-up and a cosine decay to 10% over --planned steps. Not tuned
// against other rates (no time here); it was stable (bench/results/fmnist-ldm.md).
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

import { FashionMnistDataset } from '../../src/data/fashion_mnist';
import { DataLoader } from '../../src/data/loader';
import { writeSafetensors, readSafetensors } from '../../src/io/safetensors';
import { AutoencoderKL, AutoencoderKLLoss, loadAutoencoderConfig } from '../../src/models/autoencoder';
import { Adam, optimizerStateFromTensors, optimizerStateToTensors } from '../../src/optim/adam';
import { backward, noGrad } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, runOp1 } from '../../src/tensor/tensor';

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const base = arg('base', 'configs/fmnist-kl-f4.yaml')!;
  const run = arg('run', 'runs/fmnist-kl-f4')!;
  const out = arg('out', 'models/fmnist-kl-f4.safetensors')!;
  const minutes = Number(arg('minutes', '30'));
  const maxSteps = Number(arg('steps', '1000000'));
  const batch = Number(arg('batch', '32'));
  const lr = Number(arg('lr', '1e-3'));
  const every = Number(arg('every', '200'));
  const warmup = 100;
  // The planned length of the cosine schedule (steps); the run may stop earlier on --minutes.
  const planned = Number(arg('planned', String(Math.min(maxSteps, 6000))));
  fs.mkdirSync(run, { recursive: true });

  const spec = loadAutoencoderConfig(base);
  if (spec.kind !== 'kl') throw new Error(`${base}: not a KL autoencoder`);
  // kl_weight from the config's (otherwise unused) lossconfig.
  const raw = YAML.parse(fs.readFileSync(base, 'utf8')) as { model?: { params?: { lossconfig?: { params?: { kl_weight?: number } } } } };
  const klWeight = Number(raw.model?.params?.lossconfig?.params?.kl_weight ?? 1e-6);
  const model = new AutoencoderKL({ ddconfig: spec.ddconfig, embed_dim: spec.embedDim }, new Generator(0));
  const lossFn = new AutoencoderKLLoss({ klWeight });
  const params: [string, Tensor][] = [...model.namedParameters(), ...lossFn.namedParameters().map(([k, t]): [string, Tensor] => [`loss.${k}`, t])];
  const opt = new Adam(params, { lr, betas: [0.5, 0.9] });
  const size = spec.ddconfig.resolution;
  const ds = new FashionMnistDataset({ split: 'train', size, fit: { mode: 'pad', pad: 'zero' } });
  const loader = new DataLoader(ds, { batchSize: batch, seed: 1234, shuffle: true, dropLast: true });
  const gen = new Generator(99);
  let step = 0;
  const ckpt = path.join(run, 'last.safetensors');
  if (fs.existsSync(ckpt)) {
    const { tensors, metadata } = await readSafetensors(ckpt);
    const own = new Map<string, Tensor>();
    for (const [k, t] of tensors) if (!k.startsWith('optimizer.')) own.set(k, t);
    model.loadStateDict(new Map([...own].filter(([k]) => !k.startsWith('loss.'))), { strict: true });
    lossFn.loadStateDict(new Map([['logvar', own.get('loss.logvar')!]]), { strict: true });
    opt.loadState(optimizerStateFromTensors(tensors, metadata));
    for (const t of tensors.values()) t.dispose();
    const st = JSON.parse(metadata.train);
    step = st.step;
    loader.setState(st.loader);
    gen.setState(st.gen);
    console.log(`resumed from ${ckpt} at step ${step}`);
  }
  const logFile = path.join(run, 'log.csv');
  if (!fs.existsSync(logFile)) fs.writeFileSync(logFile, 'step,seconds,loss,rec_l1,kl,logvar,lr\n');
  const t0 = Date.now();
  const prevSeconds = step > 0 && fs.existsSync(path.join(run, 'seconds')) ? Number(fs.readFileSync(path.join(run, 'seconds'), 'utf8')) : 0;
  const lrAt = (s: number) => (s < warmup ? lr * (s + 1) / warmup : lr * (0.1 + 0.45 * (1 + Math.cos(Math.PI * Math.min(1, (s - warmup) / Math.max(1, planned - warmup))))));
  let acc = { loss: 0, rec: 0, kl: 0, n: 0 };

  const save = async () => {
    const o = optimizerStateToTensors(opt.state());
    const tensors = new Map<string, Tensor>([...model.namedParameters(), ...params.filter(([k]) => k.startsWith('loss.')), ...o.tensors]);
    const meta = { ...o.metadata, train: JSON.stringify({ step, loader: loader.state(), gen: gen.state() }) };
    await writeSafetensors(ckpt, tensors, meta);
    fs.writeFileSync(path.join(run, 'seconds'), String(prevSeconds + (Date.now() - t0) / 1000));
  };

  while (step < maxSteps && (Date.now() - t0) / 60000 < minutes) {
    const b = loader.next();
    for (const g of opt.paramGroups) g.lr = lrAt(step);
    const parts = tidy(() => {
      const { dec, posterior } = model.forward(b.x, { generator: gen });
      const r = lossFn.forward(b.x, dec, posterior);
      backward(r.loss);
      return [r.loss, r.rec, r.kl];
    });
    b.x.dispose();
    b.y?.dispose();
    opt.step();
    model.zeroGrad();
    lossFn.zeroGrad();
    const [l, rec, kl] = await Promise.all(parts.map((t) => t.item()));
    parts.forEach((t) => t.dispose());
    acc = { loss: acc.loss + l, rec: acc.rec + rec, kl: acc.kl + kl, n: acc.n + 1 };
    step++;
    if (step % 50 === 0 || step === 1) {
      const lv = await lossFn.logvar.item();
      const sec = prevSeconds + (Date.now() - t0) / 1000;
      const row = [step, sec.toFixed(1), (acc.loss / acc.n).toFixed(2), (acc.rec / acc.n).toFixed(5), (acc.kl / acc.n).toFixed(1), lv.toFixed(3), lrAt(step - 1).toExponential(2)];
      fs.appendFileSync(logFile, row.join(',') + '\n');
      console.log(row.join(','));
      acc = { loss: 0, rec: 0, kl: 0, n: 0 };
    }
    if (step % every === 0) await save();
  }
  await save();
  // Held-out check: mean |x - rec| and PSNR of the posterior mode on 256 test images.
  const test = new FashionMnistDataset({ split: 'test', size, fit: { mode: 'pad', pad: 'zero' }, limit: 256 });
  const tl = new DataLoader(test, { batchSize: 64, shuffle: false });
  let mse = 0, l1 = 0, n = 0;
  for (let i = 0; i < 4; ++i) {
    const b = tl.next();
    const rec = noGrad(() => model.decode(model.encode(b.x).mode()));
    const a = (await b.x.data()) as Float32Array, r = (await rec.data()) as Float32Array;
    for (let j = 0; j < a.length; ++j) {
      mse += (a[j] - r[j]) ** 2;
      l1 += Math.abs(a[j] - r[j]);
    }
    n += a.length;
    b.x.dispose();
    b.y?.dispose();
    rec.dispose();
  }
  console.log(`test (256 images): L1 ${(l1 / n).toFixed(4)}, PSNR ${(10 * Math.log10(4 / (mse / n))).toFixed(2)} dB`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  // float16 halves the shipped file (the loaders convert to float32; --no-half keeps float32).
  const half = !process.argv.includes('--no-half');
  const final = model.namedParameters().map(([k, t]): [string, Tensor] => [k, half ? runOp1('cast', [t], { dtype: 'float16' }) : t]);
  await writeSafetensors(out, final, { format: 'pt', source: 'tdq-native bench/fmnist_ldm/train_ae.ts', steps: String(step), config: 'configs/fmnist-kl-f4.yaml', dtype: half ? 'float16' : 'float32' });
  console.log(`wrote ${out} after ${step} steps`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
