// Quantization-aware training through the project's trainer: the prepare hook
// quantizes and calibrates the float UNet, the trainer trains both parameter
// groups and checkpoints them, a resumed run restores every quantizer, and the
// final model loads for sampling with the TDQ table.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadConfig } from '../../src/config';
import { sample } from '../../src/diffusion/samplers/index';
import { buildUNet, scheduleFromConfig } from '../../src/models/diffusion';
import { resolveQuantConfig } from '../../src/quant/config';
import { qatPrepare } from '../../src/quant/qat';
import { loadQuantized } from '../../src/quant/quantize_model';
import { Generator } from '../../src/tensor/random';
import { loadCheckpoint, saveCheckpoint } from '../../src/train/checkpoint';
import { train } from '../../src/train/trainer';
import { fmnistSkip } from '../helpers/datasets';

// Without the dataset this skips with the reason (under CI=true it runs and fails).
describe('QAT with the trainer', { skip: fmnistSkip() }, () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-qat-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('trains W4A8 TDQ from a float checkpoint, resumes, and samples from the table', async () => {
    const { config } = loadConfig(path.join(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), {
      overrides: [
        'model.params.unet_config.params.channel_mult=[1,1]', 'model.params.unet_config.params.num_res_blocks=1',
        'model.params.unet_config.params.attention_resolutions=[2]', 'training.batch_size=4', 'training.max_steps=4',
        'training.warmup_steps=0', 'training.log_every=1', 'training.checkpoint_every=2', 'training.sample_every=0',
      ],
    });
    const fp = path.join(dir, 'fp.safetensors');
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    await saveCheckpoint(fp, { config, model: unet });
    unet.dispose();
    const schedule = scheduleFromConfig(config.model.params);
    const qcfg = resolveQuantConfig({ nBitW: 4, nBitA: 8, useDynamic: true });
    const calib = { schedule, steps: 4, nSamples: 1, seed: 0, method: 'minmax' as const, sampleShape: [1, 32, 32], fitIters: 30 };
    const out = path.join(dir, 'run');

    const r1 = await train({ config, outDir: out, initCheckpoint: fp, stopAtStep: 2, print: null, prepare: qatPrepare(qcfg, { ...calib, quantLr: (lr) => lr / 10 }) });
    assert.equal(r1.step, 2);
    const ck = await loadCheckpoint(r1.checkpoint);
    assert.equal(JSON.parse(ck.metadata.quant).nBitW, 4);
    assert.ok(ck.model.has('input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.0.weight'));
    assert.ok(ck.model.has('input_blocks.1.0.in_layers.2.act_quant.calib_step'));
    assert.equal(ck.model.get('input_blocks.1.0.in_layers.2.weight')?.dtype, 'float32', 'training checkpoints keep float weights');
    assert.equal(ck.metadata.quant_weights, undefined);
    assert.ok(ck.ema?.has('input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.0.weight'), 'the EMA follows the quantizer parameters too');
    const groups = ck.optimizer!.groups.map((g) => [g.name, g.lr]);
    assert.deepEqual(groups.map(([n]) => n), ['float', 'quant', 'tdq']);
    assert.ok(Math.abs((groups[1][1] as number) / (groups[0][1] as number) - 0.1) < 1e-9, `quant lr ${groups}`);
    assert.equal(groups[2][1], groups[1][1], 'the TDQ MLPs default to the quantizer rate');
    for (const m of [ck.model, ck.ema]) if (m) for (const t of m.values()) t.dispose();

    // Resume: the structure only; the checkpoint restores steps, MLPs and statistics.
    const r2 = await train({ config, outDir: out, resume: out, print: null, prepare: qatPrepare(qcfg, { ...calib, calibrate: false }) });
    assert.equal(r2.step, 4);
    assert.ok(r2.exported);

    const fin = await loadCheckpoint(r2.exported!);
    // The final model stores 4-bit levels two per byte (training checkpoints keep float weights, above).
    assert.equal(fin.metadata.quant_weights, 'int');
    assert.equal(fin.model.get('input_blocks.1.0.in_layers.2.weight_int4')?.dtype, 'uint8');
    assert.equal(fin.model.has('input_blocks.1.0.in_layers.2.weight'), false);
    assert.equal(fin.ema, null);
    const qm = loadQuantized(buildUNet(config.model.params.unet_config, new Generator(1)), fin.metadata, fin.model, fin.ema);
    assert.ok(qm.hasTable && qm.ctx.useTable);
    const x = await sample((x, t) => qm.forward(x, t), { sampler: 'ddim', steps: 4, schedule, shape: [2, 1, 32, 32], seed: 0 });
    const v = (await x.data()) as Float32Array;
    assert.ok(v.every(Number.isFinite));
    x.dispose();
    qm.dispose();
    for (const m of [fin.model, fin.ema]) if (m) for (const t of m.values()) t.dispose();
  });
});
