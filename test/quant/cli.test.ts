import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { calibrateCommand } from '../../src/cli/commands/calibrate';
import { inspectCommand } from '../../src/cli/commands/inspect';
import { main } from '../../src/cli/index';
import { loadConfig } from '../../src/config';
import { readSafetensors } from '../../src/io/safetensors';
import { buildUNet } from '../../src/models/diffusion';
import { plotActivationRanges, plotStepCurves, tilePngs } from '../../src/quant/plot';
import { Generator } from '../../src/tensor/random';
import { saveCheckpoint } from '../../src/train/checkpoint';

const COMMANDS = [calibrateCommand, inspectCommand];

/** Runs the CLI with the two commands; returns the exit code and what went to stderr. */
async function cli(args: string[]): Promise<{ code: number; err: string }> {
  let err = '';
  const log = console.log;
  console.log = () => {}; // keep the test output readable
  try {
    const code = await main(args, { commands: COMMANDS, err: (s) => (err += s) });
    return { code, err };
  } finally {
    console.log = log;
  }
}

function isColourful(png: PNG): boolean {
  for (let i = 0; i < png.data.length; i += 4) {
    const [r, g, b] = [png.data[i], png.data[i + 1], png.data[i + 2]];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 80) return true;
  }
  return false;
}

describe('plots', () => {
  it('step-size and range panels are tiled into one PNG', () => {
    const t = Array.from({ length: 100 }, (_, i) => i * 10);
    const png = PNG.sync.read(plotStepCurves([
      { name: 'a.act_quant', tdq: { t, step: t.map((v) => 0.01 + v / 1e4) }, calib: { t: [0, 500, 990], step: [0.01, 0.06, 0.11] } },
      { name: 'b.act_quant', staticStep: 0.05, calib: { t: [0, 990], step: [0.02, 0.07] } },
      { name: 'c.out_quant', tdq: { t, step: t.map(() => 0.02) } },
      { name: 'd.act_quant', staticStep: 0.3 },
    ], { logY: true, panelWidth: 300, panelHeight: 200 }));
    assert.equal(png.width, 900);
    assert.equal(png.height, 400);
    assert.ok(isColourful(png));
    const r = PNG.sync.read(plotActivationRanges([{ name: 'x', t: [1, 2, 3], min: [-1, -2, -3], max: [1, 3, 5], covered: [-4, 4] }]));
    assert.equal(r.width, 640);
    assert.throws(() => tilePngs([], 2), /no panels/);
  });
});

describe('calibrate and inspect commands', () => {
  let dir: string, fp: string;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-cli-'));
    fp = path.join(dir, 'fp.safetensors');
    // The Fashion-MNIST config with a smaller UNet (one level of 32 channels, attention at 16x16).
    const { config } = loadConfig(path.join(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), {
      overrides: ['model.params.unet_config.params.channel_mult=[1,1]', 'model.params.unet_config.params.num_res_blocks=1', 'model.params.unet_config.params.attention_resolutions=[2]'],
    });
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    await saveCheckpoint(fp, { config, model: unet });
    unet.dispose();
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('inspect refuses a full-precision checkpoint with a clear message', async () => {
    const r = await cli(['inspect', '--ckpt', fp]);
    assert.equal(r.code, 1);
    assert.match(r.err, /fp.safetensors is not a quantized checkpoint: it has no 'quant' metadata and no quantizer tensors/);
    assert.equal((await cli(['inspect', '--ckpt', path.join(dir, 'missing.safetensors')])).code, 1);
  });

  it('calibrate writes a TDQ checkpoint that inspect prints and plots; bad flags are refused', async () => {
    const q = path.join(dir, 'q.safetensors');
    const r = await cli(['calibrate', '--ckpt', fp, '--n_bit_w', '4', '--n-bit-a', '8', '--use-dynamic', '--n-samples', '1', '--steps', '4', '--fit-iters', '30', '--out', q]);
    assert.equal(r.code, 0, r.err);
    const { metadata, tensors } = await readSafetensors(q);
    assert.equal(JSON.parse(metadata.quant).nBitW, 4);
    assert.ok(tensors.has('model.input_blocks.1.0.in_layers.2.act_quant.step_table'));
    for (const t of tensors.values()) t.dispose();

    const plots = path.join(dir, 'plots');
    const i = await cli(['inspect', '--ckpt', q, '--out-dir', plots, '--layers', '*.in_layers.2', 'middle_block.1.qkv']);
    assert.equal(i.code, 0, i.err);
    for (const f of ['q-steps.png', 'q-ranges.png']) {
      const png = PNG.sync.read(fs.readFileSync(path.join(plots, f)));
      assert.ok(png.width >= 640 && isColourful(png), f);
    }

    assert.match((await cli(['calibrate', '--ckpt', q, '--n-samples', '1'])).err, /is already quantized \(W8A8|is already quantized/);
    assert.match((await cli(['calibrate', '--ckpt', fp, '--n-bit-w', '9'])).err, /--n-bit-w must be an integer from 2 to 8, got 9/);
    assert.match((await cli(['calibrate', '--ckpt', fp, '--keep-fp', 'nope.layer', '--n-samples', '1', '--steps', '2'])).err, /keepFp names 'nope.layer' match no conv\/linear layer/);
    assert.match((await cli(['inspect', '--ckpt', q, '--layers', 'zzz'])).err, /--layers 'zzz' matches no quantized layer/);
  });
});
