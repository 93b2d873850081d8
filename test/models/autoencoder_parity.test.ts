// Parity of the first-stage autoencoders with a PyTorch restatement of the
// upstream modules (test/reference/autoencoder_ref.py), from committed
// fixtures: no PyTorch at run time. Tiny widths (ch 8, 4 GroupNorm groups),
// the released configs' ch_mult: KL f4 / f8 / f16, VQ f4 (attn_type none) /
// f8 (attention at the latent level). Outputs agree to 1e-4 relative (2-norm),
// VQ indices exactly.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  AutoencoderKL, AutoencoderKLLoss, DiagonalGaussianDistribution, VQModel, VQModelInterface, VectorQuantizer,
} from '../../src/models/autoencoder';
import { backward, noGrad } from '../../src/tensor/autograd';
import { add, mul, sum } from '../../src/tensor/ops/elementwise';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { relError } from '../helpers/assert';
import { loadFixture, loadIo } from './autoencoder_fixture';

const RTOL = 1e-4;

async function close(what: string, actual: Tensor, expected: Tensor, rtol = RTOL): Promise<number> {
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const e = relError((await actual.data()) as Float32Array, (await expected.data()) as Float32Array);
  console.log(`# ${what}: relative error ${e.toExponential(2)}`);
  assert.ok(e <= rtol, `${what}: relative error ${e.toExponential(3)} > ${rtol}`);
  return e;
}

async function sameInts(what: string, actual: Tensor, expected: Tensor): Promise<void> {
  assert.equal(actual.dtype, 'int32', `${what}: dtype`);
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  assert.deepEqual([...((await actual.data()) as Int32Array)], [...((await expected.data()) as Int32Array)], what);
}

const GRAD_KEYS = [
  'encoder.conv_in.weight', 'encoder.down.0.block.0.norm1.weight', 'encoder.mid.attn_1.q.weight', 'quant_conv.weight',
  'post_quant_conv.bias', 'decoder.mid.attn_1.proj_out.weight', 'decoder.up.0.block.0.conv1.weight', 'decoder.conv_out.weight',
];

async function klCase(name: string): Promise<void> {
  const f = await loadFixture(name);
  const io = (k: string) => f.io.get(k)!;
  const model = new AutoencoderKL({ ddconfig: f.config.ddconfig, embed_dim: f.config.embed_dim });
  assert.deepEqual([...model.stateDict().keys()], f.manifest.map(([k]) => k), 'state-dict keys in upstream order');
  model.loadStateDict(f.weights, { strict: true });
  model.eval();
  const r = noGrad(() => {
    const moments = model.encodeMoments(io('x'));
    const post = new DiagonalGaussianDistribution(moments);
    const nll = post.nll(post.sample({ noise: io('eps') }));
    return { moments, mode: post.mode(), std: post.std, kl: post.kl(), nll, dec: model.decode(io('mode')) };
  });
  await close(`${name} encoder moments`, r.moments, io('moments'));
  await close(`${name} posterior mode`, r.mode, io('mode'));
  await close(`${name} posterior std`, r.std, io('std'));
  await close(`${name} posterior kl`, r.kl, io('kl'));
  await close(`${name} posterior nll`, r.nll, io('nll'));
  await close(`${name} decoder(mode)`, r.dec, io('dec_mode'));
  // The training loss and its gradients through every kind of block.
  const lossFn = new AutoencoderKLLoss({ klWeight: f.config.kl_weight, logvarInit: f.config.logvar_init });
  const post = model.encode(io('x'));
  const { loss } = lossFn.forward(io('x'), model.decode(post.sample({ noise: io('eps') })), post);
  await close(`${name} loss`, loss, fromArray(await io('loss').data(), []));
  backward(loss);
  const params = new Map(model.namedParameters());
  for (const k of GRAD_KEYS) await close(`${name} grad ${k}`, params.get(k)!.grad!, io(`grad.${k}`), 2e-4);
  await close(`${name} grad loss.logvar`, lossFn.logvar.grad!, fromArray(await io('grad.loss.logvar').data(), []), 2e-4);
  model.dispose();
  lossFn.dispose();
}

async function vqCase(name: string): Promise<void> {
  const f = await loadFixture(name);
  const io = (k: string) => f.io.get(k)!;
  const cfg = { ddconfig: f.config.ddconfig, embed_dim: f.config.embed_dim, n_embed: f.config.n_embed! };
  const model = new VQModel(cfg);
  assert.deepEqual([...model.stateDict().keys()], f.manifest.map(([k]) => k), 'state-dict keys in upstream order');
  model.loadStateDict(f.weights, { strict: true });
  model.eval();
  const r = noGrad(() => {
    const h = model.encodeToPrequant(io('x'));
    // The quantizer on the reference latents, and the whole encode on our own.
    const [quant, qloss, info] = model.quantize.forward(io('h'));
    const [, , [, , ownIndices]] = model.encode(io('x'));
    return { h, quant, qloss, info, ownIndices, dec: model.decode(io('quant')), fwd: model.forward(io('x')).dec };
  });
  await close(`${name} encoder (pre-quantization)`, r.h, io('h'));
  assert.equal(r.info[0], null);
  assert.equal(r.info[1], null);
  await sameInts(`${name} indices`, r.info[2], io('indices'));
  await close(`${name} quant`, r.quant, io('quant'), 1e-6);
  await close(`${name} quantizer loss`, r.qloss, fromArray(await io('qloss').data(), []));
  await sameInts(`${name} indices from encode(x)`, r.ownIndices, io('indices'));
  await close(`${name} decode(quant)`, r.dec, io('dec'));
  await close(`${name} forward`, r.fwd, io('dec'));
  const iface = new VQModelInterface(cfg);
  iface.loadStateDict(f.weights, { strict: true });
  iface.eval();
  const ri = noGrad(() => ({ h: iface.encode(io('x')), dec: iface.decode(io('h')), decNoQ: iface.decode(io('h'), true) }));
  await close(`${name} VQModelInterface.encode`, ri.h, io('h'));
  await close(`${name} VQModelInterface.decode (quantizes)`, ri.dec, io('dec'));
  await close(`${name} VQModelInterface.decode force_not_quantize`, ri.decNoQ, io('dec_not_quantized'));
  model.dispose();
  iface.dispose();
}

describe('first-stage autoencoders: parity with the PyTorch reference (committed fixtures)', () => {
  it('AutoencoderKL f4 (ch_mult 1,2,4)', () => klCase('kl_f4'));
  it('AutoencoderKL f8 (ch_mult 1,2,4,4)', () => klCase('kl_f8'));
  it('AutoencoderKL f16 (ch_mult 1,1,2,2,4, attention at 4 px)', () => klCase('kl_f16'));
  it('VQModel f4 (ch_mult 1,2,4, attn_type none)', () => vqCase('vq_f4'));
  it('VQModel f8 (ch_mult 1,2,2,4, attention at the latent level)', () => vqCase('vq_f8'));

  it('DiagonalGaussianDistribution: logvar clamped to [-30, 20], kl against N(0, I) and another Gaussian, deterministic', async () => {
    // (B=1, 2C=6, 1, 1): means 0.5, -1, 2 and log-variances 25, -40, 1.
    const p = fromArray([0.5, -1, 2, 25, -40, 1], [1, 6, 1, 1]);
    const d = new DiagonalGaussianDistribution(p);
    const lv = [20, -30, 1], mu = [0.5, -1, 2];
    const near = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
    const got = (await d.logvar.data()) as Float32Array;
    lv.forEach((v, i) => near(got[i], v, `logvar[${i}]`));
    const std = (await d.std.data()) as Float32Array;
    lv.forEach((v, i) => near(std[i], Math.fround(Math.exp(0.5 * v)), `std[${i}]`));
    const kl0 = 0.5 * lv.reduce((a, v, i) => a + mu[i] ** 2 + Math.exp(v) - 1 - v, 0);
    near(await d.kl().item(), kl0, 'kl to N(0, I)');
    const o = new DiagonalGaussianDistribution(fromArray([0, 0, 1, 0, 2, 0], [1, 6, 1, 1]));
    const olv = [0, 2, 0], omu = [0, 0, 1];
    const kl1 = 0.5 * lv.reduce((a, v, i) => a + (mu[i] - omu[i]) ** 2 / Math.exp(olv[i]) + Math.exp(v) / Math.exp(olv[i]) - 1 - v + olv[i], 0);
    near(await d.kl(o).item(), kl1, 'kl to another Gaussian');
    const det = new DiagonalGaussianDistribution(p, true);
    assert.deepEqual([...((await det.std.data()) as Float32Array)], [0, 0, 0]);
    assert.deepEqual([...((await det.kl().data()) as Float32Array)], [0]);
    assert.deepEqual([...((await det.sample({ noise: fromArray([1, 1, 1], [1, 3, 1, 1]) }).data()) as Float32Array)], mu);
  });

  for (const legacy of [true, false]) {
    it(`VectorQuantizer ${legacy ? 'legacy' : 'fixed'} beta: indices, loss, straight-through and codebook gradients`, async () => {
      const all = await loadIo('quantizer');
      const io = (k: string) => all.get(k)!;
      const tag = legacy ? 'legacy' : 'fixed';
      const q = new VectorQuantizer(16, 4, { beta: 0.25, legacy, saneIndexShape: true });
      q.loadStateDict(new Map([['embedding.weight', io('embedding')]]));
      const z = fromArray(await io('z').data(), io('z').shape);
      z.requiresGrad = true;
      const [quant, loss, [, , indices]] = q.forward(z);
      await sameInts(`quantizer ${tag} indices (B, H, W)`, indices, io(`${tag}.indices`));
      await close(`quantizer ${tag} quant`, quant, io(`${tag}.quant`), 1e-6);
      await close(`quantizer ${tag} loss`, loss, fromArray(await io(`${tag}.loss`).data(), []), 1e-6);
      backward(add(sum(mul(quant, io('g'))), loss));
      await close(`quantizer ${tag} grad z`, z.grad!, io(`${tag}.grad_z`), 1e-5);
      await close(`quantizer ${tag} grad codebook`, q.embedding.weight.grad!, io(`${tag}.grad_embedding`), 1e-5);
      q.dispose();
    });
  }
});
