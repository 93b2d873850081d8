#!/usr/bin/env node
// Trains the Fashion-MNIST feature classifier behind FID-FMNIST and writes
// models/fmnist-classifier.safetensors (run after `npx tsc -p .`):
//   node scripts/train-fmnist-classifier.js [--epochs 2] [--batch 128] [--lr 2e-3] [--seed 0] [--threads 2] [--out FILE]
// The shipped file was made with the defaults; the metadata records the
// settings, the test accuracy and the time taken.
'use strict';
const path = require('node:path');
const root = path.resolve(__dirname, '..');
const { trainFmnistClassifier, fmnistAccuracy, defaultFmnistClassifierPath } = require(path.join(root, 'dist/src/eval/fmnist_classifier.js'));
const { writeSafetensors } = require(path.join(root, 'dist/src/io/safetensors.js'));
const { native } = require(path.join(root, 'dist/src/tensor/native.js'));

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

(async () => {
  const epochs = Number(arg('epochs', 2)), batchSize = Number(arg('batch', 128)), lr = Number(arg('lr', 2e-3)), seed = Number(arg('seed', 0));
  const limit = arg('limit') ? Number(arg('limit')) : undefined;
  if (arg('threads')) native().setThreads(Number(arg('threads')));
  const out = arg('out', defaultFmnistClassifierPath());
  const t0 = Date.now();
  const { model, steps } = await trainFmnistClassifier({ epochs, batchSize, lr, seed, limit, log: (m) => console.log(m) });
  const trainSeconds = (Date.now() - t0) / 1000;
  const accuracy = await fmnistAccuracy(model);
  console.log(`test accuracy ${(100 * accuracy).toFixed(2)}% after ${steps} steps, ${trainSeconds.toFixed(0)} s of training`);
  await writeSafetensors(out, model.stateDict(), {
    format: 'tdq-native fmnist-classifier v1',
    epochs: String(epochs),
    batch_size: String(batchSize),
    lr: String(lr),
    seed: String(seed),
    steps: String(steps),
    test_accuracy: accuracy.toFixed(4),
    train_seconds: trainSeconds.toFixed(0),
    threads: String(native().info().threads),
  });
  console.log(`wrote ${out}`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
