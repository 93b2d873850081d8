// Latent diffusion through the CLI, end to end on the tiny LDM of
// test/fixtures/latent: `train --base LDM.yaml --first-stage` trains it,
// `sample --base --ckpt` samples the result; QAT (`train --ckpt FP --n_bit_w
// --n_bit_a --use_dynamic`) quantizes its UNet only, resumes, and samples;
// `calibrate --base --ckpt` writes a quantized LDM that `sample` loads.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadLatentModel } from '../../src/models/load';
import { readCheckpoint as tensorsOf, sameBits as same } from '../helpers/checkpoints';
import { FIX, tinyLdmYaml, writeYamlIn } from '../helpers/configs';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-train-latent-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, out: `${r.stdout}\n${r.stderr}`, stdout: r.stdout };
}
const pngs = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\d+\.png$/.test(f)) : []);


// The config without a ckpt_path: the first stage comes from --first-stage.
const cfg = writeYamlIn(tmp, tinyLdmYaml({ maxSteps: 3, ckptPath: '' }).replace('scale_lr: false', ''));
const FIRST = path.join(FIX, 'tiny_ldm_cond.ckpt');
const fpRun = path.join(tmp, 'fp');

describe('train / calibrate / sample: latent diffusion from the CLI', () => {
  before(() => {
    const r = cli(['train', '--base', cfg, '--first-stage', FIRST, '--scale_lr', 'False', '--logdir', tmp, '--name', 'fp']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.stdout, /learning rate 1\.00e-3 \(base_learning_rate as is\)/);
    assert.match(r.stdout, /scale_by_std: scale_factor = /);
    assert.match(r.stdout, /finished at step 3/);
  });

  it('train writes model.safetensors that sample --base --ckpt reads (class-conditional PNGs)', () => {
    assert.ok(fs.existsSync(path.join(fpRun, 'model.safetensors')));
    const out = path.join(tmp, 's-fp');
    const r = cli(['sample', '--no-progress', '--base', cfg, '--ckpt', path.join(fpRun, 'model.safetensors'), '--n_samples', '2', '--custom_steps', '2', '--classes', '0,1', '--logdir', out, '--no-grid']);
    assert.equal(r.code, 0, r.out);
    assert.equal(pngs(out).length, 2);
  });

  it('QAT: the UNet is quantized (TDQ), the first and cond stages stay float; resume continues it; sample loads it', async () => {
    const r = cli(['train', '--base', cfg, '--ckpt', path.join(fpRun, 'model.safetensors'), '--n_bit_w', '8', '--n_bit_a', '4', '--use_dynamic', '--max-steps', '2', '--calib-samples', '2', '--calib-steps', '2', '--logdir', tmp, '--name', 'qat']);
    assert.equal(r.code, 0, r.out);
    const qrun = path.join(tmp, 'qat');
    const ck = await tensorsOf(path.join(qrun, 'checkpoints', 'step-00000002.safetensors'));
    assert.ok(typeof ck.metadata.quant === 'string', 'quantization metadata');
    const keys = [...ck.tensors.keys()];
    assert.ok(keys.some((k) => /^model\.diffusion_model\..*act_quant\./.test(k)), 'UNet activation quantizers');
    assert.ok(!keys.some((k) => /^(first_stage_model|cond_stage_model)\..*(act|weight)_quant/.test(k)), 'first and cond stages not quantized');
    const fp = await tensorsOf(path.join(fpRun, 'model.safetensors'));
    assert.ok(same(ck.tensors.get('first_stage_model.decoder.conv_out.weight')!, fp.tensors.get('first_stage_model.decoder.conv_out.weight')!), 'first stage frozen');
    assert.equal(ck.tensors.get('scale_factor')![0], fp.tensors.get('scale_factor')![0], 'scale_factor from the FP model, not recomputed');
    const rr = cli(['train', '--base', cfg, '--resume', qrun, '--max-steps', '3']);
    assert.equal(rr.code, 0, rr.out);
    assert.match(rr.stdout, /resumed from .* at step 2/);
    assert.match(rr.stdout, /finished at step 3/);
    const m = await loadLatentModel(path.join(qrun, 'model.safetensors'), { config: cfg });
    assert.equal(m.report.quantized, true);
    m.dispose();
    const out = path.join(tmp, 's-qat');
    const s = cli(['sample', '--no-progress', '--base', cfg, '--ckpt', path.join(qrun, 'model.safetensors'), '--n_samples', '2', '--custom_steps', '2', '--logdir', out, '--no-grid', '--classes', '2']);
    assert.equal(s.code, 0, s.out);
    assert.equal(pngs(out).length, 2);
  });

  it('calibrate --base LDM.yaml: a quantized LDM (UNet only) that sample loads', async () => {
    const q = path.join(tmp, 'ptq.safetensors');
    const r = cli(['calibrate', '--base', cfg, '--ckpt', path.join(fpRun, 'model.safetensors'), '--n-bit-w', '8', '--n-bit-a', '8', '--use-dynamic', '--n-samples', '2', '--steps', '2', '--fit-iters', '20', '--out', q]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.stdout, /in latent space .*classes drawn from 0\.\.3/);
    const ck = await tensorsOf(q);
    assert.ok(typeof ck.metadata.quant === 'string');
    assert.ok([...ck.tensors.keys()].some((k) => /^model\.diffusion_model\..*step_table/.test(k)), 'TDQ step table');
    const m = await loadLatentModel(q, { config: cfg });
    assert.equal(m.report.quantized, true);
    assert.deepEqual(m.report.unexpectedKeys, []);
    m.dispose();
    const out = path.join(tmp, 's-ptq');
    const s = cli(['sample', '--no-progress', '--base', cfg, '--ckpt', q, '--n_samples', '1', '--custom_steps', '2', '--logdir', out, '--no-grid']);
    assert.equal(s.code, 0, s.out);
    assert.equal(pngs(out).length, 1);
  });

  it('errors: --first-stage on a pixel config; a --scale_lr that is not a boolean; no first stage at all', () => {
    const pixel = writeYamlIn(tmp, `
model:
  base_learning_rate: 1.0e-3
  target: tdq_native.models.diffusion.DDPM
  params:
    image_size: 8
    channels: 1
    unet_config:
      target: tdq_native.models.unet.UNetModel
      params: {image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, channel_mult: [1], num_res_blocks: 1, attention_resolutions: [], num_heads: 2}
data: {target: tdq_native.data.Synthetic}
training: {batch_size: 2, max_steps: 1}
`);
    const a = cli(['train', '--base', pixel, '--first-stage', FIRST, '--logdir', tmp, '--name', 'e1']);
    assert.notEqual(a.code, 0);
    assert.match(a.out, /--first-stage: .* is not a latent diffusion config/);
    const b = cli(['train', '--base', cfg, '--first-stage', FIRST, '--scale_lr', 'maybe', '--logdir', tmp, '--name', 'e2']);
    assert.notEqual(b.code, 0);
    assert.match(b.out, /--scale_lr: expected a boolean \(True \/ False\), got "maybe"/);
    const c = cli(['train', '--base', cfg, '--logdir', tmp, '--name', 'e3']);
    assert.notEqual(c.code, 0);
    assert.match(c.out, /needs the first stage's trained weights/);
  });
});
