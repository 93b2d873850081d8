// The results rows of the shipped Fashion-MNIST latent diffusion model: full
// precision, W8A4 static (LSQ steps) and W8A4 TDQ, both PTQ with the library's
// calibrate() on the LDM's UNet, each scored by FID-FMNIST against the 60,000
// training images and by the per-class accuracy of the shipped classifier
// (models/fmnist-classifier.safetensors) on the samples, whose classes are
// drawn uniformly (image i has class i mod 10).
//
//   node dist/bench/fmnist_ldm/eval_rows.js [--ckpt models/fmnist-ldm.safetensors] [--config configs/fmnist-ldm.yaml]
//        [--n 500] [--steps 25] [--batch 100] [--scale 1] [--calib-samples 16] [--calib-steps 25]
//        [--rows fp,w8a4-lsq,w8a4-tdq] [--seed 0] [--out bench/results/fmnist-ldm.json] [--png-dir DIR]
//
// The quantizers see what the UNet sees while sampling: the calibration wraps
// the UNet and the class embedder into one Denoiser (x, t, labels) -> eps, so
// calibrate() draws its trajectories with random garment labels (0-9). The
// first stage (decoder) and the class embedding stay in full precision, as in
// the paper's LDM experiments, where only the UNet is quantized.
import fs from 'node:fs';
import path from 'node:path';

import { sample } from '../../src/diffusion/samplers';
import { arraySource, fashionMnistSource, loadFeatureNet, runEval } from '../../src/eval/run';
import { saveImages } from '../../src/io/png';
import type { Denoiser } from '../../src/models/diffusion';
import type { ClassEmbedder } from '../../src/models/conditioning';
import { loadLatentModel } from '../../src/models/load_latent';
import { Module } from '../../src/nn/module';
import { type QuantConfig, calibrateWithReport, resolveQuantConfig } from '../../src/quant';
import { noGrad } from '../../src/tensor/autograd';
import { add, chunk, scale, sub } from '../../src/tensor/ops';
import { full } from '../../src/tensor/ops/creation';
import { cat } from '../../src/tensor/ops/shape';
import { type Tensor, fromArray } from '../../src/tensor/tensor';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

const UNCOND = 10;

/**
 * The LDM's UNet with its class conditioning as one Denoiser: (x, t, labels)
 * -> eps, the context from the class embedder; with a guidance scale other
 * than 1, classifier-free guidance against the "no class" label (one batch of
 * both halves, as upstream's DDIM sampler). The UNet's children are shared
 * under their own names, so quantizer keep-lists see the UNet's layer names.
 */
class ClassCondUNet extends Module implements Denoiser {
  constructor(readonly unet: Denoiser, readonly embedder: ClassEmbedder, readonly guidance: number, readonly config: { in_channels: number; image_size: number; num_classes: number }) {
    super();
    for (const [n, c] of unet.namedChildren()) this.registerModule(n, c);
  }

  forward(x: Tensor, t: Tensor, y?: Tensor): Tensor {
    if (!y) throw new TypeError('ClassCondUNet: class labels are required');
    const cond = this.embedder.forward(y);
    if (this.guidance === 1) return this.unet.forward(x, t, undefined, cond);
    const u = this.embedder.forward(full([y.shape[0]], UNCOND, 'int32'));
    const out = this.unet.forward(cat([x, x], 0), cat([t, t], 0), undefined, cat([u, cond], 0));
    const [eu, ec] = chunk(out, 2, 0);
    return add(eu, scale(sub(ec, eu), this.guidance));
  }
}

interface Row {
  name: string;
  n: number;
  fid: number;
  accuracy: number;
  perClass: number[];
  calibSeconds: number;
  sampleSeconds: number;
}

async function main(): Promise<void> {
  const ckpt = arg('ckpt', 'models/fmnist-ldm.safetensors');
  const config = arg('config', 'configs/fmnist-ldm.yaml');
  const n = Number(arg('n', '500'));
  const steps = Number(arg('steps', '25'));
  const batch = Number(arg('batch', '100'));
  const guidance = Number(arg('scale', '1'));
  const calibSamples = Number(arg('calib-samples', '16'));
  const calibSteps = Number(arg('calib-steps', '25'));
  const seed = Number(arg('seed', '0'));
  const rows = arg('rows', 'fp,w8a4-lsq,w8a4-tdq').split(',');
  const out = arg('out', 'bench/results/fmnist-ldm.json');
  const pngDir = arg('png-dir', '');

  const net = await loadFeatureNet('fmnist');
  const reference = fashionMnistSource({ split: 'train' });
  const results: Row[] = fs.existsSync(out) ? (JSON.parse(fs.readFileSync(out, 'utf8')).rows as Row[]) : [];
  for (const name of rows) {
    const loaded = await loadLatentModel(ckpt, { config });
    const ldm = loaded.model;
    const [c, h, w] = [loaded.spec.unet.in_channels, loaded.spec.imageSize, loaded.spec.imageSize];
    const wrapped = new ClassCondUNet(ldm.model.diffusionModel as unknown as Denoiser, ldm.condStageModel as ClassEmbedder, guidance, { in_channels: c, image_size: h, num_classes: 10 });
    let denoiser: Denoiser = wrapped;
    const t0 = Date.now();
    if (name !== 'fp') {
      const m = /^w(\d)a(\d)-(lsq|tdq)$/.exec(name);
      if (!m) throw new Error(`unknown row '${name}' (fp, wNaM-lsq, wNaM-tdq)`);
      const cfg: QuantConfig = resolveQuantConfig({ nBitW: Number(m[1]), nBitA: Number(m[2]), useDynamic: m[3] === 'tdq' });
      const { model: qm } = await calibrateWithReport(wrapped, cfg, {
        schedule: ldm.schedule, steps: calibSteps, nSamples: calibSamples, seed: 1000, method: 'auto', sampleShape: [c, h, w], numClasses: 10,
      });
      if (cfg.useDynamic) {
        qm.buildTable();
        qm.useTable(true);
      }
      denoiser = qm;
    }
    const calibSeconds = (Date.now() - t0) / 1000;
    const t1 = Date.now();
    const [ic, ih, iw] = [1, 32, 32];
    const images = new Float32Array(n * ic * ih * iw);
    const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
    for (let b = 0; b * batch < n; ++b) {
      const bs = Math.min(batch, n - b * batch);
      const y = fromArray(labels.subarray(b * batch, b * batch + bs), [bs], 'int32');
      const z = await sample((x, t) => denoiser.forward(x, t, y), { sampler: 'ddim', steps, schedule: ldm.schedule, shape: [bs, c, h, w], seed: seed * 1000 + b });
      const x = noGrad(() => ldm.decode(z));
      images.set((await x.data()) as Float32Array, b * batch * ic * ih * iw);
      [x, z, y].forEach((t) => t.dispose());
      process.stderr.write(`${name}: ${Math.min(n, (b + 1) * batch)}/${n} (${((Date.now() - t1) / 1000).toFixed(0)} s)\n`);
    }
    const sampleSeconds = (Date.now() - t1) / 1000;
    if (pngDir) await saveImages(path.join(pngDir, name), { data: images, shape: [n, ic, ih, iw] });
    const samples = arraySource(name, images, [n, ic, ih, iw], { quantize8: true });
    const fid = (await runEval({ samples, reference, metrics: ['fid'], net })).metrics.fid!.value;
    // Classifier accuracy per intended class, on the 8-bit images (as saved PNGs).
    const q = Float32Array.from(images, (v) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5) / 127.5 - 1);
    const hit = new Array(10).fill(0), tot = new Array(10).fill(0);
    for (let i = 0; i < n; i += 250) {
      const bs = Math.min(250, n - i);
      const xt = fromArray(q.subarray(i * 1024, (i + bs) * 1024), [bs, 1, 32, 32]);
      const o = noGrad(() => net.run(xt));
      const l = (await o.logits.data()) as Float32Array;
      for (let j = 0; j < bs; ++j) {
        let best = 0;
        for (let k = 1; k < 10; ++k) if (l[j * 10 + k] > l[j * 10 + best]) best = k;
        tot[labels[i + j]]++;
        if (best === labels[i + j]) hit[labels[i + j]]++;
      }
      [xt, o.features, o.logits].forEach((t) => t.dispose());
    }
    const perClass = hit.map((v, k) => v / tot[k]);
    const row: Row = { name, n, fid, accuracy: hit.reduce((a, v) => a + v, 0) / n, perClass, calibSeconds, sampleSeconds };
    console.log(JSON.stringify(row));
    const k = results.findIndex((r) => r.name === name);
    if (k >= 0) results[k] = row;
    else results.push(row);
    fs.writeFileSync(out, JSON.stringify({ ckpt, config, steps, sampler: 'ddim', eta: 0, scale: guidance, seed, calibSamples, calibSteps, method: 'auto', rows: results }, null, 2) + '\n');
    if (denoiser !== wrapped) denoiser.dispose();
    loaded.dispose();
  }
  net.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
