// Autograd through every block of the first-stage autoencoders: a few Adam
// steps of a tiny KL autoencoder on fixed random data lower its loss, every
// parameter gets a gradient, and the VQ model's straight-through estimator
// carries the decoder's gradient back to the encoder.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { AutoencoderKL, AutoencoderKLLoss, VQModel, argminRows } from '../../src/models/autoencoder';
import { Adam } from '../../src/optim/adam';
import { backward, noGrad } from '../../src/tensor/autograd';
import { abs, add, mean, sub } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { randomData } from '../helpers/assert';
import { tinyDdconfig } from '../helpers/configs';

// Attention in the first level and in the middle, a channel change (nin_shortcut), both resamplers.
const DD = tinyDdconfig({ z_channels: 2, resolution: 8, in_channels: 3, out_ch: 3, attn_resolutions: [8] });

async function gradNorms(params: [string, Tensor][]): Promise<[string, number][]> {
  const out: [string, number][] = [];
  for (const [k, p] of params) {
    const g = p.grad ? ((await p.grad.data()) as Float32Array) : null;
    out.push([k, g ? Math.sqrt(g.reduce((a, v) => a + v * v, 0)) : 0]);
  }
  return out;
}

describe('first-stage autoencoders: training', () => {
  it('a tiny AutoencoderKL: every parameter gets a gradient and 12 Adam steps lower the loss', async () => {
    const model = new AutoencoderKL({ ddconfig: DD, embed_dim: 2 }, new Generator(3));
    const lossFn = new AutoencoderKLLoss({ klWeight: 1e-3 });
    const x = fromArray(randomData([4, 3, 8, 8], 7, 0.5), [4, 3, 8, 8]);
    const params = [...model.namedParameters(), ...lossFn.namedParameters().map(([k, t]): [string, Tensor] => [`loss.${k}`, t])];
    const opt = new Adam(params, { lr: 3e-3 });
    const evalRec = async () => {
      const r = noGrad(() => mean(abs(sub(x, model.forward(x, { samplePosterior: false }).dec))));
      return r.item();
    };
    const gen = new Generator(11);
    const before = await evalRec();
    const losses: number[] = [];
    for (let step = 0; step < 12; ++step) {
      const loss = tidy(() => {
        const { dec, posterior } = model.forward(x, { generator: gen });
        const l = lossFn.forward(x, dec, posterior).loss;
        backward(l);
        return l;
      });
      losses.push(await loss.item());
      loss.dispose();
      if (step === 0) {
        const norms = await gradNorms(params);
        const dead = norms.filter(([, n]) => !(n > 0) || !Number.isFinite(n)).map(([k]) => k);
        assert.deepEqual(dead, [], 'parameters without a gradient after one backward');
        assert.ok(norms.length > 80, `expected the whole model's parameters, got ${norms.length}`);
      }
      opt.step();
      model.zeroGrad();
      lossFn.zeroGrad();
    }
    const after = await evalRec();
    console.log(`# KL autoencoder: loss ${losses[0].toFixed(2)} -> ${losses[losses.length - 1].toFixed(2)}, mean |x - rec| (mode) ${before.toFixed(4)} -> ${after.toFixed(4)}`);
    assert.ok(losses[losses.length - 1] < 0.9 * losses[0], `training loss did not fall: ${losses.map((l) => l.toFixed(2)).join(', ')}`);
    assert.ok(after < before, `reconstruction error did not fall: ${before} -> ${after}`);
    model.dispose();
    lossFn.dispose();
    opt.dispose();
  });

  it('VQModel: the straight-through estimator sends the reconstruction gradient to the encoder, the loss to the codebook', async () => {
    const model = new VQModel({ ddconfig: { ...DD, double_z: false }, n_embed: 16, embed_dim: 2 }, new Generator(5));
    const x = fromArray(randomData([2, 3, 8, 8], 9, 0.5), [2, 3, 8, 8]);
    tidy(() => {
      const { dec, diff } = model.forward(x);
      backward(add(mean(abs(sub(x, dec))), diff));
    });
    const norms = new Map(await gradNorms(model.namedParameters()));
    for (const k of ['encoder.conv_in.weight', 'encoder.mid.attn_1.v.weight', 'quant_conv.weight', 'quantize.embedding.weight', 'decoder.conv_out.weight'])
      assert.ok(norms.get(k)! > 0, `${k} got no gradient`);
    model.dispose();
  });

  it('argminRows: the first smallest entry of each row, any row length', async () => {
    const rows = [
      [3, 1, 2], // 1
      [0, 0, 5], // tie: the first
      [7, 7, 7], // all equal
      [-1, 4, -1], // tie with negatives
    ];
    const d = fromArray(rows.flat(), [4, 3]);
    assert.deepEqual([...((await argminRows(d).data()) as Int32Array)], [1, 0, 0, 0]);
    // A row length that is a perfect square and one that is not, against a JS argmin.
    for (const k of [16, 37]) {
      const data = randomData([5, k], k);
      const want = Array.from({ length: 5 }, (_, r) => {
        let best = 0;
        for (let j = 1; j < k; ++j) if (data[r * k + j] < data[r * k + best]) best = j;
        return best;
      });
      assert.deepEqual([...((await argminRows(fromArray(data, [5, k])).data()) as Int32Array)], want, `k = ${k}`);
    }
  });
});
