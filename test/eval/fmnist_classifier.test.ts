import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  FMNIST_FEATURE_DIM,
  FmnistClassifier,
  crossEntropy,
  defaultFmnistClassifierPath,
  fmnistAccuracy,
  fmnistClassifierExists,
  trainFmnistClassifier,
} from '../../src/eval/fmnist_classifier';
import { readSafetensors } from '../../src/io/safetensors';
import { backward } from '../../src/tensor/autograd';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { fmnistSkip } from '../helpers/datasets';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
// Without the dataset these tests skip with the reason (under CI=true they run and fail).
const noFmnist = fmnistSkip();
const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

describe('cross-entropy against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  it('mean cross-entropy and its gradient, including very confident logits', async () => {
    const x = randomTensor([7, 10], 3, 4);
    x.arr.data[0] = 80; // a probability that rounds to 1, others to ~0
    const logits = fromArray(x.arr.data, x.arr.shape);
    logits.requiresGrad = true;
    const labels = Int32Array.from([0, 1, 2, 9, 4, 4, 3]);
    const loss = crossEntropy(logits, labels);
    backward(loss);
    const ref = await oracle.call('cross_entropy', { logits: x.arr, labels: { shape: [7], data: labels } }, {}, { wrt: ['logits'], gradOutputs: [{ shape: [], data: new Float32Array([1]) }] });
    assertClose(await f32(loss), ref.outputs[0].data as Float32Array, 1e-6, 'loss');
    assertClose(await f32(logits.grad!), ref.grads.logits.data as Float32Array, 1e-6, 'grad');
  });
});

describe('Fashion-MNIST classifier', () => {
  it('maps (N, 1, 28, 28) to 128 features and 10 logits; a padded 32 x 32 image gives the same features', async () => {
    const net = new FmnistClassifier({ seed: 1 });
    const x = randomTensor([2, 1, 28, 28], 4);
    const o = net.outputs(x.t);
    assertShape(o.features, [2, FMNIST_FEATURE_DIM]);
    assertShape(o.logits, [2, 10]);
    const padded = new Float32Array(2 * 32 * 32).fill(-1);
    for (let n = 0; n < 2; ++n) for (let r = 0; r < 28; ++r) padded.set(x.arr.data.subarray(n * 784 + r * 28, n * 784 + r * 28 + 28), n * 1024 + (r + 2) * 32 + 2);
    const op = net.outputs(fromArray(padded, [2, 1, 32, 32]));
    assert.deepEqual(Array.from(await f32(op.features)), Array.from(await f32(o.features)));
    assert.throws(() => net.outputs(randomTensor([2, 2, 28, 28], 1).t), /images must be \(N, 1 or 3, H, W\)/);
    assert.throws(() => crossEntropy(o.logits, Int32Array.from([0, 10])), /label 10 at 1 is not in \[0, 10\)/);
    net.dispose();
  });

  it('trains: a few steps on 1024 images beat chance clearly', { skip: noFmnist }, async () => {
    const { model } = await trainFmnistClassifier({ epochs: 1, limit: 1024, batchSize: 64, lr: 3e-3, seed: 5 });
    const acc = await fmnistAccuracy(model, { limit: 1000 });
    assert.ok(acc > 0.5, `accuracy after 16 steps: ${acc}`);
    model.dispose();
  });

  it('the shipped weights classify the test split', { skip: noFmnist || (fmnistClassifierExists() ? false : 'models/fmnist-classifier.safetensors is missing') }, async () => {
    const net = new FmnistClassifier();
    const { tensors, metadata } = await readSafetensors(defaultFmnistClassifierPath());
    net.loadStateDict(tensors);
    const acc = await fmnistAccuracy(net, { limit: 2000 });
    assert.ok(acc > 0.87, `accuracy on 2000 test images: ${acc}`);
    assert.equal(metadata.format, 'tdq-native fmnist-classifier v1');
    net.dispose();
  });
});
