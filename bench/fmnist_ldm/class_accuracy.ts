// Per-class accuracy of the shipped Fashion-MNIST classifier
// (models/fmnist-classifier.safetensors) on a folder of samples written by
// `tdq-native sample --classes ...` (NNNNNN.png, image i drawn for class
// classes[i mod len]; the default: every garment class, 0-9, cycled).
//
//   node dist/bench/fmnist_ldm/class_accuracy.js DIR [--classes 0,1,2,3,4,5,6,7,8,9] [--json OUT]
import fs from 'node:fs';
import path from 'node:path';

import { FASHION_MNIST_CLASSES } from '../../src/data/fashion_mnist';
import { loadFeatureNet } from '../../src/eval/run';
import { readPng } from '../../src/io/png';
import { noGrad } from '../../src/tensor/autograd';
import { fromArray } from '../../src/tensor/tensor';

async function main(): Promise<void> {
  const dir = process.argv[2];
  if (!dir || !fs.existsSync(dir)) throw new Error('usage: class_accuracy.js DIR [--classes 0,1,...] [--json OUT]');
  const ci = process.argv.indexOf('--classes');
  const classes = ci > 0 ? process.argv[ci + 1].split(',').map(Number) : [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const ji = process.argv.indexOf('--json');
  const files = fs.readdirSync(dir).filter((f) => /^\d+\.png$/.test(f)).sort();
  if (!files.length) throw new Error(`${dir}: no NNNNNN.png samples`);
  const net = await loadFeatureNet('fmnist');
  const hit = new Map<number, number>(), tot = new Map<number, number>();
  const confusion: Record<number, number[]> = {};
  const B = 256;
  for (let s = 0; s < files.length; s += B) {
    const batch = files.slice(s, s + B);
    const first = readPng(path.join(dir, batch[0]));
    const size = first.channels * first.height * first.width;
    const data = new Float32Array(batch.length * size);
    batch.forEach((f, i) => data.set(i === 0 ? first.data : readPng(path.join(dir, f)).data, i * size));
    const x = fromArray(data, [batch.length, first.channels, first.height, first.width]);
    const o = noGrad(() => net.run(x));
    const l = (await o.logits.data()) as Float32Array;
    batch.forEach((f, i) => {
      const want = classes[Number(f.slice(0, -4)) % classes.length];
      let best = 0;
      for (let k = 1; k < 10; ++k) if (l[i * 10 + k] > l[i * 10 + best]) best = k;
      tot.set(want, (tot.get(want) ?? 0) + 1);
      if (best === want) hit.set(want, (hit.get(want) ?? 0) + 1);
      (confusion[want] ??= new Array(10).fill(0))[best]++;
    });
    [x, o.features, o.logits].forEach((t) => t.dispose());
  }
  net.dispose();
  const per = classes.map((c) => ({ class: c, name: FASHION_MNIST_CLASSES[c], n: tot.get(c) ?? 0, accuracy: (hit.get(c) ?? 0) / (tot.get(c) ?? 1) }));
  const total = [...hit.values()].reduce((a, v) => a + v, 0) / files.length;
  for (const p of per) console.log(`${String(p.class).padStart(2)} ${p.name.padEnd(12)} ${(100 * p.accuracy).toFixed(1).padStart(5)}%  (${p.n})`);
  console.log(`all ${files.length}: ${(100 * total).toFixed(1)}%`);
  if (ji > 0) fs.writeFileSync(process.argv[ji + 1], JSON.stringify({ dir, n: files.length, accuracy: total, perClass: per, confusion }, null, 2) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
