// Training a LatentDiffusion with the trainer (src/train/subject.ts,
// LatentSubject): a frozen first stage, a trainable cond stage, scale_by_std
// set once on the first batch of a fresh run, and an exact resume: a run
// stopped at a checkpoint and resumed ends bit-for-bit where an uninterrupted
// run does (weights, EMA, optimizer, scale_factor, losses). Its checkpoints
// have upstream's keys and load with loadLatentModel.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { loadTorchCheckpoint } from '../../src/io/torch_ckpt';
import { buildLatentDiffusion } from '../../src/models/latent';
import { loadLatentTrainConfig } from '../../src/models/latent_config';
import { Generator } from '../../src/tensor/random';
import { loadLatentModel } from '../../src/models/load';
import { train } from '../../src/train/trainer';
import { assertBitIdentical, losses, readTensors as tensorsOf, sameBits as same } from '../helpers/checkpoints';
import { FIX, tinyLdmYaml, writeYamlIn } from '../helpers/configs';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-latent-train-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let n = 0;
const tmp = () => fs.mkdtempSync(path.join(tmpRoot, `r${n++}-`));
const writeYaml = (text: string) => writeYamlIn(tmpRoot, text);


describe('latent diffusion training', () => {
  it('3 steps + resume 3 == 6 steps straight (weights, EMA, optimizer, scale_factor, losses); upstream keys; loadLatentModel reads the result', async () => {
    const cfgFile = writeYaml(tinyLdmYaml({ maxSteps: 6 }));
    const config = loadLatentTrainConfig(cfgFile);
    const a = tmp(), b = tmp();
    const lines: string[] = [];
    const straight = await train({ config, outDir: a, print: (l) => lines.push(l) });
    assert.equal(straight.step, 6);
    assert.ok(lines.some((l) => /scale_by_std: scale_factor = /.test(l)), lines.join('\n'));
    const first = await train({ config, outDir: b, stopAtStep: 3, print: null });
    assert.equal(first.step, 3);
    const resumedLines: string[] = [];
    const resumed = await train({ config, outDir: b, resume: b, print: (l) => resumedLines.push(l) });
    assert.equal(resumed.step, 6);
    assert.ok(!resumedLines.some((l) => /scale_by_std/.test(l)), 'a resumed run does not recompute scale_factor');
    assertBitIdentical(await tensorsOf(straight.checkpoint), await tensorsOf(resumed.checkpoint));
    assertBitIdentical(await tensorsOf(path.join(a, 'model.safetensors')), await tensorsOf(path.join(b, 'model.safetensors')));
    assert.deepEqual(losses(b), losses(a));
    assert.notEqual(losses(a)[0], losses(a)[5]);

    // Upstream's layout, scale_factor from the first batch in every checkpoint.
    const ck3 = await tensorsOf(path.join(b, 'checkpoints', 'step-00000003.safetensors'));
    const ck6 = await tensorsOf(straight.checkpoint);
    for (const k of ['model.diffusion_model.input_blocks.0.0.weight', 'cond_stage_model.embedding.weight', 'first_stage_model.decoder.conv_out.weight', 'scale_factor', 'model_ema.diffusion_modelinput_blocks00weight'])
      assert.ok(ck6.has(k), `${k} in the checkpoint`);
    const sf = ck6.get('scale_factor')![0];
    assert.ok(sf !== 1 && Number.isFinite(sf) && sf > 0, `scale_factor ${sf}`);
    assert.equal(ck3.get('scale_factor')![0], sf);
    // The first stage is frozen: the fixture's weights; the cond stage (trainable) and the UNet move.
    const fixture = (await loadTorchCheckpoint(path.join(FIX, 'tiny_ldm_cond.ckpt'))).tensors;
    for (const k of ['first_stage_model.decoder.conv_out.weight', 'first_stage_model.encoder.conv_in.weight'])
      assert.ok(same(ck6.get(k)!, fixture.get(k)!.dataSync() as Float32Array), `${k} unchanged`);
    for (const t of fixture.values()) t.dispose();
    assert.ok(!same(ck3.get('cond_stage_model.embedding.weight')!, ck6.get('cond_stage_model.embedding.weight')!), 'the trainable cond stage is trained');
    assert.ok(!same(ck3.get('model.diffusion_model.out.2.weight')!, ck6.get('model.diffusion_model.out.2.weight')!), 'the UNet is trained');
    assert.ok(!same(ck6.get('model.diffusion_model.out.2.weight')!, ck6.get('model_ema.diffusion_modelout2weight')!), 'the EMA is its own');

    // sample's loader reads the training checkpoint (EMA weights) and the export.
    const m = await loadLatentModel(straight.checkpoint, { config: cfgFile });
    assert.equal(m.report.ema, true);
    assert.deepEqual(m.report.missingKeys, []);
    assert.equal(await m.model.scaleFactorValue(), sf);
    assert.ok(same(m.model.stateDict().get('model.diffusion_model.out.2.weight')!.dataSync() as Float32Array, ck6.get('model_ema.diffusion_modelout2weight')!));
    m.dispose();
    const e = await loadLatentModel(path.join(a, 'model.safetensors'), { config: cfgFile });
    assert.equal(e.report.ema, false);
    assert.ok(same(e.model.stateDict().get('model.diffusion_model.out.2.weight')!.dataSync() as Float32Array, ck6.get('model_ema.diffusion_modelout2weight')!), 'the export holds the EMA weights');
    e.dispose();
  });

  it('a frozen cond stage stays; l1 / x0 losses per the config; accumulate_grad_batches and scale_lr from the config', async () => {
    const cfgFile = writeYaml(tinyLdmYaml({ maxSteps: 2, extraParams: '    loss_type: l1\n    parameterization: x0', training: '  accumulate_grad_batches: 2' }).replace('cond_stage_trainable: true', 'cond_stage_trainable: false').replace('scale_lr: false', ''));
    const config = loadLatentTrainConfig(cfgFile);
    assert.equal(config.training.scale_lr, true, 'LDM configs scale the rate by default, as upstream main.py');
    assert.equal(config.training.accumulate_grad_batches, 2);
    assert.equal(config.spec.lossType, 'l1');
    const out = tmp();
    const lines: string[] = [];
    const r = await train({ config, outDir: out, print: (l) => lines.push(l) });
    assert.ok(Number.isFinite(r.lastLoss));
    assert.ok(lines.some((l) => /learning rate 8\.00e-3 = base_learning_rate 1\.00e-3 x batch 4 x accumulate 2/.test(l)), lines.join('\n'));
    const ck = await tensorsOf(r.checkpoint);
    // The run's start: the model its seed builds.
    const start = buildLatentDiffusion(config.spec, new Generator(config.training.seed));
    assert.ok(same(ck.get('cond_stage_model.embedding.weight')!, start.stateDict().get('cond_stage_model.embedding.weight')!.dataSync() as Float32Array), 'a frozen cond stage keeps its weights');
    assert.ok(!same(ck.get('model.diffusion_model.out.2.weight')!, start.stateDict().get('model.diffusion_model.out.2.weight')!.dataSync() as Float32Array), 'the UNet trains');
    start.dispose();
    assert.ok(![...ck.keys()].some((k) => k.startsWith('optimizer.cond_stage_model.')), 'a frozen cond stage has no optimizer state');
  });

  it('errors: no first-stage weights; a first stage that does not fit', async () => {
    const noFs = writeYaml(tinyLdmYaml({ maxSteps: 1, ckptPath: '' }));
    await assert.rejects(train({ config: loadLatentTrainConfig(noFs), outDir: tmp(), print: null }), /needs the first stage's trained weights: set model\.params\.first_stage_config\.params\.ckpt_path or pass --first-stage/);
    const wrong = writeYaml(tinyLdmYaml({ maxSteps: 1, ckptPath: `ckpt_path: ${path.join(FIX, 'tiny_ldm_uncond.ckpt')}` }).replace('ch: 8,', 'ch: 16,'));
    await assert.rejects(train({ config: loadLatentTrainConfig(wrong), outDir: tmp(), print: null }), /first_stage_config\.params\.ckpt_path: .*tiny_ldm_uncond\.ckpt/);
  });
});
