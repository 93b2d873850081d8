// Training an LDM's first stage, the KL autoencoder, with the same trainer
// (src/train/subject_ae.ts): AutoencoderKLLoss with its learned logvar saved
// as loss.logvar, an exact resume, a reconstruction preview, and an export
// that `reconstruct --base --ckpt` and an LDM's first_stage_config.ckpt_path read.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { encodePng } from '../../src/io/png';
import { buildAutoencoder, loadAutoencoderConfig } from '../../src/models/autoencoder';
import { loadFirstStageCheckpoint } from '../../src/models/latent';
import { loadLatentTrainConfig } from '../../src/models/latent_config';
import { loadAutoencoderTrainConfig } from '../../src/train/subject_ae';
import { train } from '../../src/train/trainer';
import { assertBitIdentical, losses, readTensors } from '../helpers/checkpoints';
import { syntheticData, tinyKlYaml, tinyLdmYaml, writeYamlIn } from '../helpers/configs';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-latent-ae-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

// The first stage of the tiny LDM (test/fixtures/latent): 16 x 16 x 1 -> 8 x 8 x 3.
const AE_YAML = tinyKlYaml({
  sections: `${syntheticData('shapes')}
training:
  batch_size: 4
  max_steps: 6
  scale_lr: false
  seed: 5
  log_every: 1
  checkpoint_every: 3
  sample_every: 3
  sample_count: 4
`,
});


describe('autoencoder training (the first stage of an LDM)', () => {
  it('3 + resume 3 == 6 straight; loss.logvar learned and saved; preview grid; the export loads as a first stage and through reconstruct', async () => {
    const cfgFile = writeYamlIn(tmp, AE_YAML);
    const config = loadAutoencoderTrainConfig(cfgFile);
    assert.equal(config.klWeight, 1e-6);
    assert.equal(config.training.ema.enabled, false, 'no EMA unless the config asks (upstream autoencoders have none)');
    const a = path.join(tmp, 'a'), b = path.join(tmp, 'b');
    const straight = await train({ config, outDir: a, print: null });
    await train({ config, outDir: b, stopAtStep: 3, print: null });
    const resumed = await train({ config, outDir: b, resume: b, print: null });
    assert.equal(resumed.step, 6);
    const ca = await readTensors(straight.checkpoint), cb = await readTensors(resumed.checkpoint);
    assertBitIdentical(ca, cb, 'differs after resume');
    assert.deepEqual(losses(b), losses(a));
    assert.ok(ca.has('encoder.conv_in.weight') && ca.has('post_quant_conv.weight'));
    assert.notEqual(ca.get('loss.logvar')![0], 0, 'the logvar is learned');
    assert.ok(fs.existsSync(path.join(a, 'samples', 'step-00000003.png')), 'reconstruction preview');

    const model = path.join(a, 'model.safetensors');
    const ae = buildAutoencoder(loadAutoencoderConfig(cfgFile));
    const skipped = await loadFirstStageCheckpoint(ae, model);
    assert.deepEqual(skipped, ['loss.logvar']);
    ae.dispose();
    // As the first stage of the tiny LDM: its ckpt_path.
    const ldmCfg = writeYamlIn(tmp, tinyLdmYaml({ maxSteps: 1, ckptPath: `ckpt_path: ${model}` }));
    const r = await train({ config: loadLatentTrainConfig(ldmCfg), outDir: path.join(tmp, 'ldm'), print: null });
    assert.equal(r.step, 1);

    const imgs = path.join(tmp, 'imgs');
    fs.mkdirSync(imgs);
    fs.writeFileSync(path.join(imgs, 'x.png'), encodePng(Float32Array.from({ length: 256 }, (_, i) => Math.sin(i / 7)), [1, 16, 16]));
    const rec = spawnSync(process.execPath, [BIN, 'reconstruct', '--base', cfgFile, '--ckpt', model, '--images', imgs, '--outdir', path.join(tmp, 'rec')], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(rec.status, 0, rec.stderr);
    assert.ok(fs.existsSync(path.join(tmp, 'rec', 'x.png')));
  });

  it('the CLI: train --base AE.yaml; QAT flags are refused', () => {
    const cfgFile = writeYamlIn(tmp, AE_YAML);
    const r = spawnSync(process.execPath, [BIN, 'train', '--base', cfgFile, '--max-steps', '2', '--logdir', tmp, '--name', 'cli-ae'], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /finished at step 2/);
    assert.ok(fs.existsSync(path.join(tmp, 'cli-ae', 'model.safetensors')));
    const q = spawnSync(process.execPath, [BIN, 'train', '--base', cfgFile, '--ckpt', path.join(tmp, 'cli-ae', 'model.safetensors'), '--n_bit_w', '8', '--n_bit_a', '8', '--logdir', tmp, '--name', 'cli-ae-q'], { encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(q.status, 0);
    assert.match(q.stderr, /QAT applies to diffusion models/);
  });
});
