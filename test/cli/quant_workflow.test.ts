// The quantization workflow through the CLI, on a tiny model: train FP, QAT
// with TDQ from it (interrupted and resumed), sample the quantized model,
// inspect it, and post-training quantization with `calibrate`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');

const YAML = `
model:
  base_learning_rate: 1.0e-3
  target: tdq_native.models.diffusion.DDPM
  params:
    beta_schedule: sqrt_linear
    timesteps: 50
    image_size: 8
    channels: 1
    unet_config:
      target: tdq_native.models.unet.UNetModel
      params: {image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2], num_heads: 1}
data: {target: tdq_native.data.Synthetic, params: {count: 16, kind: blobs}}
training: {batch_size: 4, max_steps: 4, checkpoint_every: 2, log_every: 1, seed: 1}
`;

function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `tdq-native ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout + r.stderr;
}

describe('quantization workflow through the CLI', () => {
  it('FP train -> QAT (TDQ) with resume -> sample -> inspect; PTQ calibrate -> sample', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-qwf-'));
    const cfg = path.join(dir, 'tiny.yaml');
    fs.writeFileSync(cfg, YAML);
    cli(['train', '--base', cfg, '--logdir', dir, '--name', 'fp']);
    const fp = path.join(dir, 'fp', 'model.safetensors');
    assert.ok(fs.existsSync(fp));

    const q = ['--calib-samples', '2', '--calib-steps', '5'];
    const out = cli(['train', '--base', cfg, '--logdir', dir, '--name', 'qat', '--ckpt', fp, '--n_bit_w', '8', '--n_bit_a', '4', '--use-dynamic', '--max-steps', '2', ...q]);
    assert.match(out, /W8A4 TDQ/);
    // QAT's own defaults replace the config's FP rate (1e-3) and warm-up
    assert.match(out, /QAT learning rates: weights 2\.0e-4, quantizer steps 2\.0e-5, TDQ MLPs 2\.0e-4; warm-up 0 steps/);
    // continue the QAT run to step 4 (the run's own max_steps is 2): the checkpoint carries the quantizers
    const resumed = cli(['train', '--base', cfg, '--logdir', dir, '--name', 'qat', '--resume', path.join(dir, 'qat'), '--max-steps', '4']);
    assert.match(resumed, /resumed from .*step-00000002/);
    assert.match(resumed, /QAT learning rates: weights 2\.0e-4/, 'a resumed QAT run keeps the QAT rate');
    const lrs = fs.readFileSync(path.join(dir, 'qat', 'log.csv'), 'utf8').trim().split('\n').slice(1).map((l) => Number(l.split(',')[2]));
    assert.deepEqual(lrs, [2e-4, 2e-4, 2e-4, 2e-4]);
    // flags and --set win over the QAT defaults
    const custom = cli(['train', '--base', cfg, '--logdir', dir, '--name', 'qat-lr', '--ckpt', fp, '--n-bit-w', '8', '--n-bit-a', '8', '--max-steps', '1', '--lr', '1e-4', '--quant-lr', '3e-3', '--set', 'training.warmup_steps=1', '--calib-method', 'mse', ...q]);
    assert.match(custom, /QAT learning rates: weights 1\.0e-4, quantizer steps 3\.0e-3; warm-up 1 steps/);
    // a resumed run keeps the rates its command line gave (the run's --lr from its stored config, --quant-lr from its checkpoint)
    const customMore = cli(['train', '--base', cfg, '--logdir', dir, '--resume', path.join(dir, 'qat-lr'), '--max-steps', '2']);
    assert.match(customMore, /QAT learning rates: weights 1\.0e-4, quantizer steps 3\.0e-3/);
    assert.match(custom, /QAT initial step sizes: mse on 2 calibration trajectories of 5 DDIM steps/);
    assert.match(out, /QAT initial step sizes: stats on 2/);
    assert.doesNotMatch(resumed, /QAT initial step sizes/, 'a resumed run keeps its steps');
    const qat = path.join(dir, 'qat', 'model.safetensors');
    assert.ok(fs.existsSync(qat));

    cli(['sample', '--ckpt', qat, '--n-samples', '2', '--custom-steps', '5', '--outdir', path.join(dir, 's-qat')]);
    assert.ok(fs.existsSync(path.join(dir, 's-qat', 'grid.png')));
    const info = cli(['inspect', '--ckpt', qat, '--out-dir', path.join(dir, 'inspect')]);
    assert.match(info, /W8A4/);
    assert.ok(fs.readdirSync(path.join(dir, 'inspect')).some((f) => f.endsWith('.png')));

    const ptq = path.join(dir, 'ptq.safetensors');
    cli(['calibrate', '--ckpt', fp, '--n-bit-w', '4', '--n-bit-a', '8', '--use-dynamic', '--n-samples', '2', '--steps', '5', '--fit-iters', '50', '--out', ptq]);
    cli(['sample', '--ckpt', ptq, '--n-samples', '2', '--custom-steps', '5', '--outdir', path.join(dir, 's-ptq')]);
    assert.ok(fs.existsSync(path.join(dir, 's-ptq', '000001.png')));
  });

  it('QAT flags without full-precision weights, or with bad bits, are clear errors', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-qwf-'));
    const cfg = path.join(dir, 'tiny.yaml');
    fs.writeFileSync(cfg, YAML);
    const noCkpt = spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--logdir', dir, '--n-bit-w', '4', '--n-bit-a', '4'], { encoding: 'utf8' });
    assert.equal(noCkpt.status, 1);
    assert.match(noCkpt.stderr, /tdq-native: QAT starts from full-precision weights: pass them with --ckpt/);
    const badBits = spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--logdir', dir, '--ckpt', cfg, '--n-bit-w', '9', '--n-bit-a', '4'], { encoding: 'utf8' });
    assert.equal(badBits.status, 1);
    assert.match(badBits.stderr, /nBitW|n-bit-w|2\.\.8|2 to 8/);
  });
});
