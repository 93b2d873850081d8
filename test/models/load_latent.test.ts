// Loading a whole latent diffusion model (src/models/load_latent.ts through
// load.ts): an upstream-shaped LDM config and a Lightning .ckpt written by
// torch.save (test/reference/ldm_ckpt_ref.py, fixtures tiny_ldm_*.ckpt), or a
// .safetensors with the same keys. EMA by default, schedule buffers checked,
// a report of missing / unexpected / ignored keys, dispose() frees all.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { writeSafetensors } from '../../src/io/safetensors';
import { loadTorchCheckpoint } from '../../src/io/torch_ckpt';
import { ModelLoadError, loadLatentModel, loadModel } from '../../src/models/load';
import { ClassEmbedder } from '../../src/models/conditioning';
import type { Tensor } from '../../src/tensor/tensor';

const DIR = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'latent');
const COND = { ckpt: path.join(DIR, 'tiny_ldm_cond.ckpt'), config: path.join(DIR, 'tiny_ldm_cond.yaml') };
const UNCOND = { ckpt: path.join(DIR, 'tiny_ldm_uncond.ckpt'), config: path.join(DIR, 'tiny_ldm_uncond.yaml') };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-load-latent-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const vals = (t: Tensor) => Array.from(t.dataSync() as Float32Array);
const UNET_KEY = 'input_blocks.0.0.weight';

async function fileTensors(file: string): Promise<Map<string, Tensor>> {
  return (await loadTorchCheckpoint(file)).tensors;
}

describe('loadLatentModel: a whole LDM checkpoint (.ckpt from torch.save)', () => {
  it('class-conditional: UNet from model_ema.*, first stage, cond stage and scale_factor from the file; a clean report', async () => {
    const file = await fileTensors(COND.ckpt);
    const m = await loadLatentModel(COND.ckpt, COND);
    const own = m.model.stateDict();
    assert.equal(m.report.ema, true);
    assert.deepEqual(m.report.missingKeys, []);
    assert.deepEqual(m.report.unexpectedKeys, []);
    assert.equal(m.report.firstStageFrom, 'checkpoint');
    for (const k of ['betas', 'alphas_cumprod', 'model_ema.decay', 'model_ema.num_updates']) assert.ok(m.report.ignoredKeys.includes(k), `${k} ignored`);
    // The fixture's EMA is raw + 0.01: the loaded UNet has the EMA values, not the raw ones.
    assert.deepEqual(vals(own.get(`model.diffusion_model.${UNET_KEY}`)!), vals(file.get(`model_ema.diffusion_model${UNET_KEY.replace(/\./g, '')}`)!));
    assert.notDeepEqual(vals(own.get(`model.diffusion_model.${UNET_KEY}`)!), vals(file.get(`model.diffusion_model.${UNET_KEY}`)!));
    assert.deepEqual(vals(own.get('first_stage_model.decoder.conv_out.weight')!), vals(file.get('first_stage_model.decoder.conv_out.weight')!));
    assert.deepEqual(vals(own.get('cond_stage_model.embedding.weight')!), vals(file.get('cond_stage_model.embedding.weight')!));
    assert.ok(Math.abs((await m.model.scaleFactorValue()) - 0.8) < 1e-7);
    assert.ok(m.model.condStageModel instanceof ClassEmbedder);
    assert.equal(m.numClasses, 4);
    assert.equal(m.model.training, false);
    const p = m.model.parameters()[0];
    m.dispose();
    assert.ok(p.disposed, 'dispose() frees the weights');
    m.dispose();
    for (const t of file.values()) t.dispose();
  });

  it('noEma: the raw UNet weights', async () => {
    const file = await fileTensors(UNCOND.ckpt);
    const m = await loadLatentModel(UNCOND.ckpt, { ...UNCOND, noEma: true });
    assert.equal(m.report.ema, false);
    assert.equal(m.numClasses, null);
    assert.deepEqual(vals(m.model.stateDict().get(`model.diffusion_model.${UNET_KEY}`)!), vals(file.get(`model.diffusion_model.${UNET_KEY}`)!));
    assert.ok(m.report.ignoredKeys.some((k) => k.startsWith('model_ema.diffusion_model')));
    m.dispose();
    for (const t of file.values()) t.dispose();
  });

  it('a .safetensors with the same keys; an extra key is reported as unexpected, a missing one is an error naming it', async () => {
    const file = await fileTensors(UNCOND.ckpt);
    const extra = new Map(file);
    const foo = file.get('scale_factor')!;
    extra.set('foo.bar', foo);
    const st = path.join(tmp, 'extra.safetensors');
    await writeSafetensors(st, extra);
    const m = await loadLatentModel(st, { config: UNCOND.config });
    assert.deepEqual(m.report.unexpectedKeys, ['foo.bar']);
    m.dispose();
    const lacking = new Map(file);
    lacking.delete('first_stage_model.decoder.conv_out.bias');
    const st2 = path.join(tmp, 'lacking.safetensors');
    await writeSafetensors(st2, lacking);
    await assert.rejects(loadLatentModel(st2, { config: UNCOND.config }), (e: Error) => e instanceof ModelLoadError && /lacks: first_stage_model\.decoder\.conv_out\.bias/.test(e.message));
    for (const t of file.values()) t.dispose();
  });

  it('a config whose schedule is not the checkpoint\'s, a config of another model, and a pixel loader given an LDM config are clear errors', async () => {
    const other = path.join(tmp, 'other_schedule.yaml');
    fs.writeFileSync(other, fs.readFileSync(UNCOND.config, 'utf8').replace('linear_end: 0.0155', 'linear_end: 0.0195'));
    await assert.rejects(loadLatentModel(UNCOND.ckpt, { config: other }), (e: Error) => e instanceof ModelLoadError && /schedule buffer 'betas'.*does not describe this checkpoint/.test(e.message));
    // The conditional config (cross-attention UNet, cond stage) on the unconditional checkpoint.
    await assert.rejects(loadLatentModel(UNCOND.ckpt, { config: COND.config }), (e: Error) => e instanceof ModelLoadError && /lacks: .*(cond_stage_model|transformer|proj)/.test(e.message));
    await assert.rejects(loadLatentModel(path.join(tmp, 'nope.ckpt'), UNCOND), /checkpoint not found/);
    await assert.rejects(loadModel(UNCOND.ckpt, { config: UNCOND.config }), (e: Error) => e instanceof ModelLoadError && /latent diffusion model.*loadLatentModel/.test(e.message));
  });
});
