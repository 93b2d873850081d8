// An upstream lsun_churches-shaped LDM config (main.DataModuleFromConfig with
// ldm.data.lsun.LSUNChurchesTrain, lightning.trainer, scheduler_config) trains
// unchanged: its data and training keys are read by the one training-config
// reader (src/config/load.ts), its model by latent_config.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { encodePng } from '../../src/io/png';
import { writeSafetensors } from '../../src/io/safetensors';
import { buildAutoencoder } from '../../src/models/autoencoder';
import { loadLatentTrainConfig } from '../../src/models/latent_config';
import { loadLatentModel } from '../../src/models/load';
import { Generator } from '../../src/tensor/random';
import { train } from '../../src/train/trainer';
import { churchesYaml } from '../helpers/configs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-latent-lsun-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const churchesConfig = (firstStage: string, txt: string, root: string) =>
  churchesYaml({
    unet: { image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1], num_res_blocks: 1, channel_mult: [1], num_heads: 2 },
    batchSize: 2,
    warmUpSteps: 2,
    firstStageCkpt: firstStage,
    trainParams: { txt_file: txt, data_root: root },
    trainer: { benchmark: true, accumulate_grad_batches: 2 },
  });

describe('latent diffusion training: an upstream lsun_churches-shaped config', () => {
  it('reads data / lightning / scheduler keys as upstream and trains on LSUN-style folders; the checkpoint loads', async () => {
    const root = path.join(tmp, 'churches');
    fs.mkdirSync(root);
    const names: string[] = [];
    for (let i = 0; i < 6; ++i) {
      const px = Float32Array.from({ length: 3 * 20 * 20 }, (_, j) => Math.sin(i + j * 0.37));
      fs.writeFileSync(path.join(root, `c${i}.png`), encodePng(px, [3, 20, 20]));
      names.push(`c${i}.png`);
    }
    const txt = path.join(tmp, 'train.txt');
    fs.writeFileSync(txt, names.join('\n') + '\n');
    // A first stage with some weights (this test is about the wiring, not its quality).
    const ae = buildAutoencoder({ kind: 'kl', target: 'ldm.models.autoencoder.AutoencoderKL', embedDim: 4, notes: [], ddconfig: { double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0, attn_type: 'vanilla' } } as never, new Generator(5));
    const fsFile = path.join(tmp, 'kl.safetensors');
    await writeSafetensors(fsFile, new Map(ae.stateDict()));
    ae.dispose();
    const cfgFile = path.join(tmp, 'churches.yaml');
    fs.writeFileSync(cfgFile, churchesConfig(fsFile, txt, root));

    assert.throws(() => loadLatentTrainConfig(cfgFile), /training\.max_steps: required: upstream leaves the length of a run to Lightning/);
    const config = loadLatentTrainConfig(cfgFile, { overrides: ['training.max_steps=2', 'training.log_every=1'] });
    assert.equal(config.data.target, 'tdq_native.data.LSUN');
    assert.equal(config.training.batch_size, 2);
    assert.equal(config.training.accumulate_grad_batches, 2);
    assert.equal(config.training.lr_schedule, 'lambda_linear');
    assert.equal(config.training.scale_lr, true);
    assert.ok(config.warnings.some((w) => /lightning\.trainer\.benchmark/.test(w)), config.warnings.join('\n'));
    assert.ok(!config.warnings.some((w) => /not read.*\bdata\b/.test(w)), 'the data section is read');
    const out = path.join(tmp, 'run');
    const r = await train({ config, outDir: out, print: null });
    assert.equal(r.step, 2);
    assert.ok(Number.isFinite(r.lastLoss));
    const m = await loadLatentModel(r.checkpoint, { config: cfgFile });
    assert.equal(m.model.conditioningKey, null);
    assert.notEqual(await m.model.scaleFactorValue(), 1);
    m.dispose();
  });
});
