// Sampling a latent diffusion model through the library (src/latent_pipeline.ts):
// the pipeline's images are LatentDiffusion.decode of the sampler's latents for
// the same seed, labels and guidance; the option checks are typed errors.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import { sample } from '../src/diffusion/samplers';
import { LatentSampleOptionError, planLatentSampling } from '../src/latent_pipeline';
import { loadLatentPipeline, loadPipeline } from '../src/pipeline';
import { full } from '../src/tensor/ops/creation';
import { Generator } from '../src/tensor/random';
import { fromArray } from '../src/tensor/tensor';

const DIR = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'latent');
const COND = { ckpt: path.join(DIR, 'tiny_ldm_cond.ckpt'), config: path.join(DIR, 'tiny_ldm_cond.yaml') };
const UNCOND = { ckpt: path.join(DIR, 'tiny_ldm_uncond.ckpt'), config: path.join(DIR, 'tiny_ldm_uncond.yaml') };

describe('LatentDiffusionPipeline', () => {
  it('class-conditional with guidance: generate() = LatentDiffusion.decode(sampler output) for the same seed', async () => {
    const pipe = await loadLatentPipeline(COND.ckpt, { config: COND.config });
    assert.deepEqual(pipe.imageShape, [1, 16, 16]);
    assert.deepEqual(pipe.latentShape, [3, 8, 8]);
    const got = await pipe.generate({ n: 3, batchSize: 3, seed: 5, steps: 4, classes: [2, 0], scale: 2, uncondClass: 3 });
    assert.deepEqual(got.shape, [3, 1, 16, 16]);
    // The same by hand: the cond stage's contexts, the guided eps model, the sampler, decode.
    const ldm = pipe.model;
    const cond = ldm.getLearnedConditioning({ class_label: fromArray([2, 0, 2], [3], 'int32') });
    const uc = ldm.getLearnedConditioning({ class_label: full([3], 3, 'int32') });
    const z = await sample(ldm.epsModel(cond, { uncond: uc, scale: 2 }), { shape: [3, 3, 8, 8], sampler: 'ddim', steps: 4, generator: new Generator(5), schedule: ldm.schedule });
    const want = Float32Array.from(ldm.decode(z).dataSync() as Float32Array);
    assert.deepEqual(Array.from(got.data), Array.from(want));
    // Guidance and labels reach the model: without them the images differ.
    const plain = await pipe.generate({ n: 3, seed: 5, steps: 4, classes: [2, 0] });
    assert.notDeepEqual(Array.from(plain.data), Array.from(got.data));
    const other = await pipe.generate({ n: 3, seed: 5, steps: 4, classes: [1], scale: 2, uncondClass: 3 });
    assert.notDeepEqual(Array.from(other.data), Array.from(got.data));
    // Deterministic: the same seed and options give the same images.
    const again = await pipe.generate({ n: 3, batchSize: 3, seed: 5, steps: 4, classes: [2, 0], scale: 2, uncondClass: 3 });
    assert.deepEqual(Array.from(again.data), Array.from(got.data));
    pipe.dispose();
    await assert.rejects(pipe.generate({ n: 1 }), /after dispose/);
  });

  it('unconditional: latents from the sampler decoded; sampleImages = decode(sampleLatents)', async () => {
    const pipe = await loadLatentPipeline(UNCOND.ckpt, { config: UNCOND.config });
    const plan = pipe.plan({ n: 2, sampler: 'ddim', steps: 4, eta: 1 });
    assert.equal(plan.classes, null);
    assert.equal(pipe.labels(plan, 0, 2), null);
    const z = await pipe.sampleLatents(plan, null, 2, new Generator(9));
    const want = Array.from(pipe.model.decode(z).dataSync() as Float32Array);
    const got = Array.from(await pipe.sampleImages(plan, null, 2, new Generator(9)));
    assert.deepEqual(got, want);
    assert.ok(got.every(Number.isFinite));
    const gen = await pipe.generate({ n: 2, seed: 9, steps: 4, eta: 1 });
    assert.deepEqual(Array.from(gen.data), want);
    pipe.dispose();
  });

  it('labels cycle through --classes; by default every class but the unconditional one', () => {
    const traits = { conditional: true, numClasses: 11, condStage: 'ClassEmbedder' };
    const p = planLatentSampling({ n: 5, classes: [0, 3, 9] }, traits);
    assert.deepEqual(p.classes, [0, 3, 9]);
    const d = planLatentSampling({ n: 5, scale: 3 }, traits);
    assert.deepEqual(d.classes, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(d.guidance, { uncondClass: 10, scale: 3 });
    assert.deepEqual(planLatentSampling({ n: 1 }, { ...traits, numClasses: 4 }).classes, [0, 1, 2, 3]);
    assert.equal(p.clipDenoised, false, 'no clipping of latents with ddim (as upstream)');
    assert.equal(planLatentSampling({ n: 1, sampler: 'ddpm' }, traits).clipDenoised, true, 'ddpm clips as upstream\'s p_sample_loop');
  });

  it('bad options are LatentSampleOptionErrors naming the option', async () => {
    const uncond = { conditional: false, numClasses: null, condStage: null };
    const four = { conditional: true, numClasses: 4, condStage: 'ClassEmbedder' };
    const cases: [Parameters<typeof planLatentSampling>[0], typeof uncond | typeof four, string, RegExp][] = [
      [{ n: 1, classes: [1] }, uncond, 'classes', /--classes 1: this model is unconditional/],
      [{ n: 1, scale: 2 }, uncond, 'scale', /--scale 2: .*this model is unconditional/],
      [{ n: 1, scale: 2 }, four, 'scale', /no known unconditional class; name it with --uncond-class/],
      [{ n: 1, classes: [4] }, four, 'classes', /4 is not a class of this model \(0\.\.3\)/],
      [{ n: 1, uncondClass: 7 }, four, 'uncond-class', /--uncond-class must be a class of this model/],
      [{ n: 1, scale: NaN, uncondClass: 3 }, four, 'scale', /finite/],
    ];
    for (const [o, traits, option, re] of cases)
      assert.throws(() => planLatentSampling(o, traits), (e: Error) => e instanceof LatentSampleOptionError && e.option === option && re.test(e.message));
    assert.throws(() => planLatentSampling({ n: 1 }, { conditional: true, numClasses: null, condStage: 'BERTEmbedder' }), /not a class embedder/);
    // Through a loaded model too, and the pixel loader refuses an LDM config.
    const pipe = await loadLatentPipeline(UNCOND.ckpt, { config: UNCOND.config });
    await assert.rejects(pipe.generate({ n: 1, classes: [0] }), LatentSampleOptionError);
    pipe.dispose();
    await assert.rejects(loadPipeline(UNCOND.ckpt, { config: UNCOND.config }), /latent diffusion model: use loadLatentPipeline/);
  });
});
