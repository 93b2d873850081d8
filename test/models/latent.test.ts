// LatentDiffusion: parity with a PyTorch restatement of upstream's
// LatentDiffusion (test/reference/latent_ref.py; committed fixtures in
// test/fixtures/latent, no PyTorch at run time) to 1e-4 relative (2-norm):
// encode -> z * scale_factor, the scale_by_std value, p_losses for fixed noise
// and t (l2/eps and l1/x0 with logvar_init and l_simple_weight), the UNet's
// output inside LatentDiffusion, decode of a latent (KL and VQ first stages).
// Then: the first stage is frozen in training, conditioning keys, the
// cond-stage hook with cross-attention, and sampling in latent space + decode.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import { sample } from '../../src/diffusion/samplers';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { Module } from '../../src/nn/module';
import { AdamW } from '../../src/optim/adam';
import { AutoencoderKL, VQModelInterface, type DDConfig } from '../../src/models/autoencoder';
import {
  type CondStage, type LatentDenoiser, LatentDiffusion, buildCondStage, condStageTargets, loadFirstStageCheckpoint, registerCondStage,
} from '../../src/models/latent';
import { UNetModel } from '../../src/models/openai_unet';
import { Embedding } from '../../src/nn/layers';
import { backward, noGrad } from '../../src/tensor/autograd';
import { full } from '../../src/tensor/ops/creation';
import { add, mean, mul, reshape, sum } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { relError } from '../helpers/assert';
import { hashedWeights } from './autoencoder_fixture';

const RTOL = 1e-4;
const DIR = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'latent');

interface Cfg {
  unet: Record<string, unknown>;
  ddconfig: DDConfig;
  embed_dim: number;
  n_embed?: number;
  sched: { timesteps: number; linear_start: number; linear_end: number };
  losses?: { name: string; loss_type: 'l1' | 'l2'; parameterization: 'eps' | 'x0'; l_simple_weight: number; logvar_init: number }[];
  scale_factor?: number;
  seed: number;
}

async function loadCase(name: string): Promise<{ cfg: Cfg; manifest: [string, number[]][]; io: (k: string) => Tensor; weights: Map<string, Tensor> }> {
  const { tensors, metadata } = await readSafetensors(path.join(DIR, `${name}.io.safetensors`));
  const cfg = JSON.parse(metadata.config) as Cfg;
  const manifest = JSON.parse(metadata.weights) as [string, number[]][];
  const weights = hashedWeights(manifest, cfg.seed);
  const io = (k: string) => {
    const t = tensors.get(k);
    if (!t) throw new Error(`fixture ${name}: no tensor ${k}`);
    return t;
  };
  return { cfg, manifest, io, weights };
}

async function close(what: string, actual: Tensor, expected: Tensor, rtol = RTOL): Promise<void> {
  assert.equal(actual.size, expected.size, `${what}: size`);
  const e = relError((await actual.data()) as Float32Array, (await expected.data()) as Float32Array);
  console.log(`# ${what}: relative error ${e.toExponential(2)}`);
  assert.ok(e <= rtol, `${what}: relative error ${e.toExponential(3)} > ${rtol}`);
}

const tOf = async (t: Tensor) => Array.from((await t.data()) as Float32Array);

function unetOf(cfg: Cfg): UNetModel {
  return new UNetModel({ ...(cfg.unet as object), num_classes: null } as ConstructorParameters<typeof UNetModel>[0]);
}

function ldmOf(cfg: Cfg, unet: LatentDenoiser, ae: AutoencoderKL | VQModelInterface, extra: Partial<ConstructorParameters<typeof LatentDiffusion>[0]> = {}): LatentDiffusion {
  return new LatentDiffusion({
    unet, firstStage: ae, timesteps: cfg.sched.timesteps, linearStart: cfg.sched.linear_start, linearEnd: cfg.sched.linear_end, betaSchedule: 'linear', ...extra,
  });
}

/** The tiny KL case's model with the fixture's weights (scale_factor 1, scale_by_std). */
async function klModel() {
  const c = await loadCase('kl');
  const ae = new AutoencoderKL({ ddconfig: c.cfg.ddconfig, embed_dim: c.cfg.embed_dim });
  const ldm = ldmOf(c.cfg, unetOf(c.cfg) as unknown as LatentDenoiser, ae, { scaleByStd: true });
  const dict = new Map(c.weights);
  dict.set('scale_factor', full([], 1));
  ldm.loadStateDict(dict, { strict: true });
  return { ...c, ae, ldm };
}

describe('LatentDiffusion: parity with the PyTorch reference (committed fixtures)', () => {
  it('KL first stage: state-dict keys, scale_by_std, encode, p_losses, the UNet inside, decode', async () => {
    const { cfg, manifest, io, ldm, ae } = await klModel();
    assert.deepEqual([...ldm.stateDict().keys()], ['scale_factor', ...manifest.map(([k]) => k)], 'upstream keys in upstream order');
    assert.ok(manifest.some(([k]) => k.startsWith('model.diffusion_model.')) && manifest.some(([k]) => k.startsWith('first_stage_model.')));

    const sf = await ldm.initScaleByStd(io('x'), { noise: io('eps_std') });
    const sfRef = ((await io('scale_factor').data()) as Float32Array)[0];
    assert.ok(Math.abs(sf - sfRef) <= 1e-4 * sfRef, `scale_factor ${sf} vs ${sfRef}`);
    assert.equal(ldm.stateDict().get('scale_factor'), ldm.scaleFactorBuffer, 'the scale factor is the saved buffer');
    await assert.rejects(() => ldm.initScaleByStd(io('x'), { noise: io('eps_std') }), /expected 1/);

    const z = ldm.encode(io('x'), { noise: io('eps_enc') });
    assert.equal(z.requiresGrad, false);
    await close('encode: posterior sample * scale_factor', z, io('z'));

    const t = (await tOf(io('t'))).map(Math.round);
    for (const l of cfg.losses!) {
      const m = ldmOf(cfg, ldm.model.diffusionModel, ae, { lossType: l.loss_type, parameterization: l.parameterization, lSimpleWeight: l.l_simple_weight, logvarInit: l.logvar_init });
      const r = noGrad(() => m.pLosses(io('z'), null, t, io('noise')));
      await close(`p_losses ${l.name}: loss_simple (B)`, r.lossSimple, io(`loss_simple_${l.name}`));
      await close(`p_losses ${l.name}: loss`, r.loss, io(`loss_${l.name}`));
    }
    const xNoisy = ldm.qSample(io('z'), t, io('noise'));
    await close('the UNet inside on q_sample(z, t, noise)', noGrad(() => ldm.applyModel(xNoisy, io('t'))), io('model_out'));
    await close('apply_model(zlat, t)', noGrad(() => ldm.applyModel(io('zlat'), io('t'))), io('eps_direct'));
    await close('epsModel (the samplers\' view)', noGrad(() => ldm.epsModel()(io('zlat'), io('t'))), io('eps_direct'));
    await close('decode_first_stage(zlat)', ldm.decode(io('zlat')), io('dec'));
    ldm.dispose();
  });

  it('first-stage weights from a PyTorch checkpoint (torch.save, Lightning style) and from a whole LDM state dict', async () => {
    const c = await loadCase('kl');
    const ae = new AutoencoderKL({ ddconfig: c.cfg.ddconfig, embed_dim: c.cfg.embed_dim });
    const skipped = await loadFirstStageCheckpoint(ae, path.join(DIR, 'kl_first_stage.ckpt'));
    assert.deepEqual(skipped, ['loss.logvar']);
    const pre = 'first_stage_model.';
    for (const [k, t] of ae.stateDict()) assert.deepEqual(await t.data(), await c.weights.get(pre + k)!.data(), k);
    // A whole LDM state dict (safetensors): its first_stage_model.* part.
    const os = await import('node:os');
    const fsm = await import('node:fs');
    const dir = fsm.mkdtempSync(path.join(os.tmpdir(), 'tdq-fs-'));
    try {
      const file = path.join(dir, 'ldm.safetensors');
      await writeSafetensors(file, c.weights);
      const ae2 = new AutoencoderKL({ ddconfig: c.cfg.ddconfig, embed_dim: c.cfg.embed_dim }, new Generator(77));
      await loadFirstStageCheckpoint(ae2, file);
      const k = 'decoder.conv_out.weight';
      assert.deepEqual(await ae2.stateDict().get(k)!.data(), await c.weights.get(pre + k)!.data());
      await assert.rejects(() => loadFirstStageCheckpoint(ae2, path.join(dir, 'nope.safetensors')), /nope\.safetensors: no such file/);
      fsm.writeFileSync(path.join(dir, 'w.bin'), 'x');
      await assert.rejects(() => loadFirstStageCheckpoint(ae2, path.join(dir, 'w.bin')), /expected a \.safetensors or PyTorch/);
      ae2.dispose();
    } finally {
      fsm.rmSync(dir, { recursive: true, force: true });
    }
    ae.dispose();
  });

  it('VQModelInterface first stage: encode (no sampling) * scale_factor, decode quantizes', async () => {
    const c = await loadCase('vq');
    const ae = new VQModelInterface({ ddconfig: c.cfg.ddconfig, embed_dim: c.cfg.embed_dim, n_embed: c.cfg.n_embed! });
    const ldm = ldmOf(c.cfg, unetOf(c.cfg) as unknown as LatentDenoiser, ae, { scaleFactor: c.cfg.scale_factor });
    assert.deepEqual([...ldm.stateDict().keys()], c.manifest.map(([k]) => k), 'no scale_factor buffer without scale_by_std (as upstream)');
    ldm.loadStateDict(c.weights, { strict: true });
    await close('VQ encode * scale_factor', ldm.encode(c.io('x')), c.io('z'));
    await close('VQ decode_first_stage (quantized)', ldm.decode(c.io('zlat')), c.io('dec'));
    ldm.dispose();
  });
});

describe('LatentDiffusion: training, conditioning, sampling', () => {
  it('a training step: gradients reach the UNet only; the first stage is frozen, in eval mode and not optimised', async () => {
    const { io, ldm, ae } = await klModel();
    ldm.train();
    assert.equal(ae.training, false, 'train() leaves the first stage in eval mode (disabled_train)');
    assert.equal(ldm.model.training, true);
    const trainable = new Set(ldm.trainableParameters());
    assert.equal(trainable.size, ldm.model.parameters().length);
    for (const p of ae.parameters()) {
      assert.equal(p.requiresGrad, false);
      assert.ok(!trainable.has(p), 'a first-stage parameter is in the optimizer\'s parameters');
    }
    const before = new Map(await Promise.all(ae.namedParameters().map(async ([k, p]) => [k, Float32Array.from((await p.data()) as Float32Array)] as const)));
    const opt = new AdamW(ldm.trainableParameters(), { lr: 1e-2 });
    const { loss } = ldm.lossOnImages(io('x'), null, new Generator(5));
    backward(loss);
    for (const p of ae.parameters()) assert.equal(p.grad, null, 'a first-stage parameter got a gradient');
    const named = new Map(ldm.namedParameters());
    const g = named.get('model.diffusion_model.out.2.weight')!.grad;
    assert.ok(g && (await tOf(sum(mul(g, g))))[0] > 0, 'the UNet output conv has a non-zero gradient');
    const unetBefore = Float32Array.from((await named.get('model.diffusion_model.input_blocks.0.0.weight')!.data()) as Float32Array);
    opt.step();
    assert.ok(relError((await named.get('model.diffusion_model.input_blocks.0.0.weight')!.data()) as Float32Array, unetBefore) > 0, 'the UNet changed');
    for (const [k, p] of ae.namedParameters()) assert.deepEqual((await p.data()) as Float32Array, before.get(k), `first-stage ${k} changed`);
    ldm.dispose();
  });

  it('conditioning keys concat / hybrid / adm are errors naming the key; crossattn needs a UNet with cross-attention', async () => {
    const { cfg, ldm, ae } = await klModel();
    const unet = ldm.model.diffusionModel;
    for (const k of ['concat', 'hybrid', 'adm'])
      assert.throws(() => ldmOf(cfg, unet, ae, { conditioningKey: k, condStage: null }), new RegExp(`conditioning_key '${k}' is not implemented`));
    assert.throws(() => ldmOf(cfg, unet, ae, { conditioningKey: 'film' }), /conditioning_key must be one of/);
    const cs = new TinyClassEmbedder(4, 8);
    assert.throws(() => ldmOf(cfg, unet, ae, { conditioningKey: 'crossattn', condStage: cs }), /needs a UNet with cross-attention/);
    assert.throws(() => ldmOf(cfg, unet, ae, { conditioningKey: 'crossattn' }), /needs a cond stage/);
    ldm.dispose();
  });

  it('crossattn: the learned conditioning reaches the UNet as its context; classifier-free guidance', async () => {
    const { cfg, ae, ldm: base } = await klModel();
    registerCondStage('test.TinyClassEmbedder', (p) => new TinyClassEmbedder(p.n_classes as number, p.embed_dim as number));
    assert.ok(condStageTargets().includes('test.TinyClassEmbedder'));
    assert.throws(() => buildCondStage({ target: 'ldm.modules.encoders.modules.BERTEmbedder' }), /'ldm.modules.encoders.modules.BERTEmbedder' is not implemented/);
    const cs = buildCondStage({ target: 'test.TinyClassEmbedder', params: { n_classes: 3, embed_dim: 3 } }) as TinyClassEmbedder;
    const rec = new ContextRecorder();
    const ldm = ldmOf(cfg, rec, ae, { conditioningKey: 'crossattn', condStage: cs });
    const c = ldm.getLearnedConditioning(fromArray(new Int32Array([2, 0]), [2], 'int32'));
    assert.deepEqual([...c.shape], [2, 1, 3]);
    const x = full([2, 3, 8, 8], 1);
    const out = ldm.applyModel(x, fromArray([5, 5], [2]), c);
    const table = (await cs.embedding.weight.data()) as Float32Array;
    // The recorder returns x + mean(context) per sample.
    const got = await tOf(out);
    const m2 = (table[6] + table[7] + table[8]) / 3, m0 = (table[0] + table[1] + table[2]) / 3;
    assert.ok(Math.abs(got[0] - (1 + m2)) < 1e-6 && Math.abs(got[192] - (1 + m0)) < 1e-6, 'the context of each sample reached the UNet');
    assert.throws(() => ldm.applyModel(x, fromArray([5, 5], [2]), null), /needs a conditioning/);
    // Guidance: eps_u + s (eps_c - eps_u), one batch of 2B.
    const uc = ldm.getLearnedConditioning(fromArray(new Int32Array([1, 1]), [2], 'int32'));
    const g = await tOf(ldm.epsModel(c, { uncond: uc, scale: 3 })(x, fromArray([5, 5], [2])));
    const mu = (table[3] + table[4] + table[5]) / 3;
    assert.ok(Math.abs(g[0] - (1 + mu + 3 * (m2 - mu))) < 1e-5, 'classifier-free guidance');
    // The cond stage is frozen unless cond_stage_trainable.
    assert.equal(cs.embedding.weight.requiresGrad, false);
    assert.ok(!ldm.trainableParameters().includes(cs.embedding.weight));
    const cs2 = new TinyClassEmbedder(3, 3);
    const ldm2 = ldmOf(cfg, new ContextRecorder(), ae, { conditioningKey: 'crossattn', condStage: cs2, condStageTrainable: true });
    assert.ok(ldm2.trainableParameters().includes(cs2.embedding.weight));
    base.dispose();
  });

  it('sampling in latent space with the project\'s samplers, then decode', async () => {
    const { ldm } = await klModel();
    ldm.eval();
    const z = await sample(ldm.epsModel(), { sampler: 'ddim', steps: 4, shape: [1, 3, 8, 8], seed: 1, schedule: ldm.schedule });
    const img = ldm.decode(z);
    assert.deepEqual([...img.shape], [1, 1, 16, 16]);
    assert.ok(((await img.data()) as Float32Array).every(Number.isFinite));
    const zx0 = await sample(ldmOf((await loadCase('kl')).cfg, ldm.model.diffusionModel, ldm.firstStageModel as AutoencoderKL, { parameterization: 'x0' }).epsModel(), { sampler: 'ddim', steps: 4, shape: [1, 3, 8, 8], seed: 1, schedule: ldm.schedule });
    assert.ok(((await zx0.data()) as Float32Array).every(Number.isFinite));
    ldm.dispose();
  });
});

/** A ClassEmbedder-shaped cond stage: labels (B) int32 -> (B, 1, D). */
class TinyClassEmbedder extends Module implements CondStage {
  readonly embedding: Embedding;
  constructor(n: number, d: number) {
    super();
    this.embedding = this.registerModule('embedding', new Embedding(n, d, { gen: new Generator(9) }));
  }
  forward(c: unknown): Tensor {
    const labels = c as Tensor;
    return reshape(this.embedding.forward(labels), [labels.shape[0], 1, this.embedding.dim]);
  }
}

/** A denoiser with cross-attention's interface: returns x + mean(context) per sample. */
class ContextRecorder extends Module implements LatentDenoiser {
  readonly config = { use_spatial_transformer: true };
  forward(x: Tensor, _t: Tensor, _y?: Tensor, context?: Tensor): Tensor {
    if (!context) throw new Error('no context');
    return add(x, reshape(mean(context, [1, 2]), [x.shape[0], 1, 1, 1]));
  }
}
