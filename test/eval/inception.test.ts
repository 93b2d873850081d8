import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { INCEPTION_FEATURE_DIM, INCEPTION_NUM_CLASSES, InceptionV3 } from '../../src/eval/inception';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { StateDictError } from '../../src/nn/module';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { atEveryLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// The bar: features of this implementation match the PyTorch reference
// (float64, BatchNorm unfolded) to 1e-4 relative. 94 float32 conv layers with
// BatchNorm folded into the weights land around 1e-6.
const RTOL = 1e-4;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-inception-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('FID InceptionV3 against a PyTorch reference of the same architecture', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  let net: InceptionV3;
  const weights = path.join(tmp, 'random-inception.safetensors');
  before(async () => {
    oracle = await Oracle.start();
    net = new InceptionV3({ seed: 7 });
    await writeSafetensors(weights, net.stateDict());
  });
  after(() => {
    oracle.close();
    net.dispose();
  });

  const compare = async (images: { t: Tensor; arr: { shape: number[]; data: Float32Array } }, attrs: Record<string, unknown>, what: string) => {
    const out = attrs.raw ? null : net.forward(images.t);
    const ref = await oracle.call('fid_inception', { x: images.arr }, { weights, ...attrs });
    const pool3 = out ? out.pool3 : net.pool3(images.t);
    const n = images.arr.shape[0];
    assertShape(pool3, [n, INCEPTION_FEATURE_DIM]);
    assertClose(await f32(pool3), ref.outputs[0].data as Float32Array, RTOL, `${what}: pool3`);
    if (out) {
      assertShape(out.logits, [n, INCEPTION_NUM_CLASSES]);
      assertClose(await f32(out.logits), ref.outputs[1].data as Float32Array, RTOL, `${what}: logits`);
      assertClose(await f32(out.logitsUnbiased), ref.outputs[2].data as Float32Array, RTOL, `${what}: unbiased logits`);
    }
    // Not a vacuous match: features vary across the batch and are mostly non-zero.
    const p = await f32(pool3);
    let nonzero = 0;
    for (const v of p) if (v > 0) ++nonzero;
    assert.ok(nonzero > p.length / 2, `${what}: ${nonzero} of ${p.length} features are positive`);
  };

  it('pool3 of a 107 x 107 input fed straight in (every block, small maps), at every CPU level', async () => {
    await atEveryLevel((level) => compare(randomTensor([1, 3, 107, 107], 1), { raw: true }, `raw 107 (${level})`));
  });

  it('Fashion-MNIST-sized grayscale batch of 2: gray -> RGB, bilinear resize to 299, pool3 and logits', async () => {
    const x = randomTensor([2, 1, 28, 28], 2);
    x.arr.data.forEach((v, i, a) => (a[i] = Math.tanh(v))); // images live in [-1, 1]
    const images = { t: fromArray(x.arr.data, x.arr.shape), arr: x.arr };
    await compare(images, { mode: 'half_pixel' }, 'gray 28');
  });

  it('a 32 x 32 RGB image with the TF1 resize', async () => {
    const x = randomTensor([1, 3, 32, 32], 3, 0.5);
    const tf = new InceptionV3({ seed: 7, resizeMode: 'asymmetric' });
    const sd = await readSafetensors(weights);
    tf.loadStateDict(sd.tensors);
    const out = tf.forward(x.t);
    const ref = await oracle.call('fid_inception', { x: x.arr }, { weights, mode: 'asymmetric' });
    assertClose(await f32(out.pool3), ref.outputs[0].data as Float32Array, RTOL, 'tf1 resize: pool3');
    tf.dispose();
  });
});

describe('FID InceptionV3: weights and inputs', () => {
  it('has the FID port\'s state-dict keys and shapes (94 conv units, fc 1008 x 2048)', () => {
    const net = new InceptionV3();
    const sd = net.stateDict();
    assert.equal(sd.size, 94 * 5 + 2);
    const shape = (k: string) => [...sd.get(k)!.shape];
    assert.deepEqual(shape('Conv2d_1a_3x3.conv.weight'), [32, 3, 3, 3]);
    assert.deepEqual(shape('Mixed_5b.branch_pool.conv.weight'), [32, 192, 1, 1]);
    assert.deepEqual(shape('Mixed_6e.branch7x7dbl_5.conv.weight'), [192, 192, 1, 7]);
    assert.deepEqual(shape('Mixed_7a.branch7x7x3_3.conv.weight'), [192, 192, 7, 1]);
    assert.deepEqual(shape('Mixed_7c.branch3x3dbl_3b.bn.running_var'), [384]);
    assert.deepEqual(shape('fc.weight'), [1008, 2048]);
    // torchvision's inception_v3 has 27,161,264 parameters; without the
    // auxiliary head (3,326,696) and with 1008 instead of 1000 classes (+16,392):
    assert.equal(net.numParameters(), 27_161_264 - 3_326_696 + 8 * 2048 + 8);
    net.dispose();
  });

  it('loads a state dict with num_batches_tracked counters and refolds BatchNorm', async () => {
    const a = new InceptionV3({ seed: 1 }), b = new InceptionV3({ seed: 2 });
    const x = randomTensor([1, 3, 75, 75], 5).t;
    const before = Array.from(await f32(b.pool3(x)));
    const dict = new Map(a.stateDict());
    dict.set('Conv2d_1a_3x3.bn.num_batches_tracked', fromArray([0], [], 'int32'));
    b.loadStateDict(dict);
    const after = await f32(b.pool3(x));
    assert.deepEqual(Array.from(after), Array.from(await f32(a.pool3(x))));
    assert.notDeepEqual(Array.from(after), before);
    const missing = new Map(a.stateDict());
    missing.delete('fc.bias');
    assert.throws(() => b.loadStateDict(missing), (e: Error) => e instanceof StateDictError && /missing keys: "fc.bias"/.test(e.message));
    a.dispose();
    b.dispose();
  });

  it('rejects images that are not (N, 1 or 3, H, W)', () => {
    const net = new InceptionV3();
    assert.throws(() => net.forward(randomTensor([1, 2, 32, 32], 1).t), /images must be \(N, 1 or 3, H, W\), got \[1, 2, 32, 32\]/);
    assert.throws(() => net.forward(randomTensor([3, 32, 32], 1).t), RangeError);
    net.dispose();
  });

  it('scripts/convert-inception.py turns a .pth state dict into a file that loads by key', { skip: skip ?? false }, async () => {
    const net = new InceptionV3({ seed: 3 });
    const st = path.join(tmp, 'src.safetensors'), pth = path.join(tmp, 'pt_inception.pth'), out = path.join(tmp, 'converted.safetensors');
    await writeSafetensors(st, net.stateDict());
    // A .pth as pytorch-fid ships it: a plain state dict with BatchNorm counters.
    const mk = `
import sys, json, struct, numpy as np, torch
raw = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]; h = json.loads(raw[8:8+n])
sd = {}
for k, e in h.items():
    if k == '__metadata__': continue
    b, end = e['data_offsets']
    sd[k] = torch.from_numpy(np.frombuffer(raw[8+n+b:8+n+end], dtype=np.float32).reshape(e['shape']).copy())
    if k.endswith('.bn.running_var'): sd[k[:-len('running_var')] + 'num_batches_tracked'] = torch.tensor(0)
torch.save(sd, sys.argv[2])`;
    const r1 = spawnSync('/usr/bin/python3', ['-c', mk, st, pth], { encoding: 'utf8' });
    assert.equal(r1.status, 0, r1.stderr);
    const script = path.resolve(__dirname, '..', '..', '..', 'scripts', 'convert-inception.py');
    const r2 = spawnSync('/usr/bin/python3', [script, pth, out], { encoding: 'utf8' });
    assert.equal(r2.status, 0, r2.stderr);
    assert.match(r2.stdout, /wrote 472 tensors \(23\d{6} parameters\)/);
    const loaded = new InceptionV3({ seed: 4 });
    loaded.loadStateDict((await readSafetensors(out)).tensors);
    const x = randomTensor([1, 3, 75, 75], 6).t;
    assert.deepEqual(Array.from(await f32(loaded.pool3(x))), Array.from(await f32(net.pool3(x))));
    // A checkpoint of another network is refused.
    const bad = path.join(tmp, 'bad.pth');
    spawnSync('/usr/bin/python3', ['-c', `import torch; torch.save({'fc.weight': torch.zeros(1000, 2048)}, '${bad}')`]);
    const r3 = spawnSync('/usr/bin/python3', [script, bad, path.join(tmp, 'bad.safetensors')], { encoding: 'utf8' });
    assert.notEqual(r3.status, 0);
    assert.match(r3.stderr, /not the FID Inception .* state dict[\s\S]*fc.weight has shape \(1000, 2048\), expected \(1008, 2048\)/);
    net.dispose();
    loaded.dispose();
  });
});
