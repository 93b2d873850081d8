// The first-stage config reader (CompVis config shapes), the upstream key
// layout, checkpoint loading with loss keys, and the errors for bad input.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import YAML from 'yaml';

import { ConfigError } from '../../src/config/load';
import {
  AutoencoderKL, AutoencoderKLLoss, DiagonalGaussianDistribution, VQModel, VQModelInterface, buildAutoencoder,
  loadAutoencoderConfig, loadFirstStageStateDict, parseAutoencoderConfig,
} from '../../src/models/autoencoder';
import { StateDictError } from '../../src/nn/module';
import { full } from '../../src/tensor/ops/creation';
import { fromArray } from '../../src/tensor/tensor';
import { tinyDdconfig, tinyKlYaml } from '../helpers/configs';

// A whole file in the shape of models/first_stage_models/kl-f8/config.yaml (small widths).
const KL_FILE = tinyKlYaml({
  embedDim: 4,
  baseLr: '4.5e-06',
  ddconfig: tinyDdconfig({ z_channels: 4, resolution: 32, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, norm_num_groups: undefined }),
  sections: `data:
  target: main.DataModuleFromConfig
  params: {batch_size: 4}
lightning:
  trainer: {benchmark: true}
`,
});

// The {target, params} node of a VQ first stage (vq-f4-noattn's shape).
const VQ_NODE = {
  target: 'ldm.models.autoencoder.VQModelInterface',
  params: {
    embed_dim: 3,
    n_embed: 64,
    ddconfig: tinyDdconfig({ attn_type: 'none', double_z: false, in_channels: 3, out_ch: 3, ch_mult: [1, 2, 4] }),
    lossconfig: { target: 'taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator', params: { disc_start: 0 } },
  },
};

function withTmp<T>(text: string, fn: (file: string) => T): T {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-ae-config-'));
  try {
    const file = path.join(dir, 'config.yaml');
    fs.writeFileSync(file, text);
    return fn(file);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function configError(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ConfigError && re.test(e.message), `expected a ConfigError matching ${re}`);
}

describe('first-stage autoencoders: config reader', () => {
  it('reads a whole CompVis KL config file, noting what it ignores', () => {
    const spec = withTmp(KL_FILE, loadAutoencoderConfig);
    assert.equal(spec.kind, 'kl');
    assert.equal(spec.embedDim, 4);
    assert.deepEqual(spec.ddconfig.ch_mult, [1, 2, 4, 4]);
    assert.equal(spec.ddconfig.norm_num_groups, 32);
    assert.equal(spec.ddconfig.attn_type, 'vanilla');
    const notes = spec.notes.join('\n');
    for (const k of ['data', 'lightning', 'base_learning_rate', 'model.params.lossconfig', 'model.params.monitor']) assert.match(notes, new RegExp(k.replace(/\./g, '\\.')));
    assert.match(notes, /LPIPSWithDiscriminator/);
    const m = buildAutoencoder(spec);
    assert.ok(m instanceof AutoencoderKL);
    const keys = [...m.stateDict().keys()];
    for (const k of ['encoder.conv_in.weight', 'encoder.down.0.block.0.norm1.weight', 'encoder.down.2.block.0.nin_shortcut.weight',
      'encoder.down.2.downsample.conv.weight', 'encoder.mid.attn_1.q.weight', 'encoder.mid.attn_1.proj_out.bias',
      'decoder.up.3.block.2.conv2.weight', 'decoder.up.1.upsample.conv.weight', 'decoder.up.0.block.0.nin_shortcut.weight',
      'quant_conv.weight', 'post_quant_conv.bias'])
      assert.ok(keys.includes(k), `missing key ${k}`);
    for (const k of ['encoder.down.3.downsample.conv.weight', 'decoder.up.0.upsample.conv.weight', 'decoder.up.3.block.0.nin_shortcut.weight'])
      assert.ok(!keys.includes(k), `unexpected key ${k}`);
    // Shapes: quant_conv maps 2 z_channels to 2 embed_dim; decoder.up.0 works at ch x 1.
    const sd = m.stateDict();
    assert.deepEqual([...sd.get('quant_conv.weight')!.shape], [8, 8, 1, 1]);
    assert.deepEqual([...sd.get('decoder.up.0.block.0.conv1.weight')!.shape], [32, 64, 3, 3]);
    m.dispose();
  });

  it('reads a VQModelInterface node; VQModel and the tdq_native target names too', () => {
    const spec = parseAutoencoderConfig(VQ_NODE);
    assert.equal(spec.kind, 'vq-interface');
    assert.equal(spec.nEmbed, 64);
    assert.equal(spec.ddconfig.attn_type, 'none');
    const m = buildAutoencoder(spec);
    assert.ok(m instanceof VQModelInterface);
    const keys = [...m.stateDict().keys()];
    assert.ok(keys.includes('quantize.embedding.weight'));
    assert.ok(!keys.some((k) => k.includes('attn')), 'attn_type none makes no attention parameters');
    m.dispose();
    assert.equal(parseAutoencoderConfig({ ...VQ_NODE, target: 'ldm.models.autoencoder.VQModel' }).kind, 'vq');
    const vq = buildAutoencoder(parseAutoencoderConfig({ ...VQ_NODE, target: 'tdq_native.models.autoencoder.VQModel' }));
    assert.ok(vq instanceof VQModel);
    vq.dispose();
  });

  it('rejects bad configs with the key path', () => {
    const vq = (params: object, dd: object = {}) => ({ ...VQ_NODE, params: { ...VQ_NODE.params, ...params, ddconfig: { ...VQ_NODE.params.ddconfig, ...dd } } });
    configError(() => parseAutoencoderConfig(vq({}, { chmult: [1] })), /params\.ddconfig: unknown key\(s\) chmult/);
    configError(() => parseAutoencoderConfig(vq({}, { attn_type: 'linear' })), /params\.ddconfig\.attn_type: linear attention/);
    configError(() => parseAutoencoderConfig(vq({ remap: 'used.npy' })), /params\.remap: remapping/);
    configError(() => parseAutoencoderConfig(vq({ n_embed: 0 })), /params\.n_embed/);
    configError(() => parseAutoencoderConfig(vq({}, { ch: 6 })), /params\.ddconfig\.ch: 6 channels .* 4 GroupNorm groups/);
    configError(() => parseAutoencoderConfig({ ...VQ_NODE, target: 'ldm.models.autoencoder.AutoencoderKL' }), /double_z: true|n_embed/);
    configError(() => parseAutoencoderConfig({ target: 'ldm.models.autoencoder.Nope', params: {} }), /target: expected one of ldm\.models\.autoencoder\.AutoencoderKL/);
    const file = YAML.parse(KL_FILE);
    file.model.params.ddconfig.ch_mult = [1, 'two'];
    configError(() => parseAutoencoderConfig(file, 'kl.yaml'), /^kl\.yaml: model\.params\.ddconfig\.ch_mult\[1\]/);
    configError(() => withTmp('model: [unclosed', loadAutoencoderConfig), /YAML/);
  });

  it('constructors check their arguments', () => {
    const dd = { ...VQ_NODE.params.ddconfig, attn_type: 'vanilla' as const };
    assert.throws(() => new AutoencoderKL({ ddconfig: dd, embed_dim: 3 }), /double_z must be true/);
    assert.throws(() => new AutoencoderKL({ ddconfig: { ...dd, double_z: true, norm_num_groups: 32 }, embed_dim: 3 }), /not divisible into 32/);
    const m = new AutoencoderKL({ ddconfig: { ...dd, double_z: true }, embed_dim: 3 });
    assert.throws(() => m.decode(full([1, 4, 4, 4], 0)), /decode: expected z of shape \[B, 3, h, w\], got \[1, 4, 4, 4\]/);
    assert.throws(() => m.encode(full([1, 1, 16, 16], 0)), /Encoder: expected input of shape \[B, 3, H, W\]/);
    assert.throws(() => new DiagonalGaussianDistribution(full([1, 3, 2, 2], 0)), /\(B, 2C, \.\.\.\)/);
    assert.throws(() => m.forward(full([1, 3, 16, 16], 0)), /needs opts\.generator or opts\.noise/);
    m.dispose();
  });

  it('loads an upstream-shaped checkpoint: loss.logvar into the loss, the discriminator and LPIPS keys listed as ignored', async () => {
    const dd = { ...VQ_NODE.params.ddconfig, attn_type: 'vanilla' as const, double_z: true };
    const src = new AutoencoderKL({ ddconfig: dd, embed_dim: 3 });
    const dict = new Map(src.stateDict());
    dict.set('loss.logvar', full([], 0.75));
    dict.set('loss.discriminator.main.0.weight', full([2, 3, 4, 4], 1));
    dict.set('loss.perceptual_loss.net.slice1.0.weight', full([2], 1));
    const dst = new AutoencoderKL({ ddconfig: dd, embed_dim: 3 }, undefined);
    const loss = new AutoencoderKLLoss();
    const r = loadFirstStageStateDict(dst, dict, { loss });
    assert.deepEqual(r.ignoredKeys, ['loss.discriminator.main.0.weight', 'loss.perceptual_loss.net.slice1.0.weight']);
    assert.equal(await loss.logvar.item(), 0.75);
    const w = (await dst.stateDict().get('decoder.up.1.block.0.conv1.weight')!.data()) as Float32Array;
    assert.deepEqual(w, await src.stateDict().get('decoder.up.1.block.0.conv1.weight')!.data());
    // A key of neither the model nor the loss is an error; so is a missing one.
    dict.set('decoder.up.9.block.0.conv1.weight', fromArray([1], [1]));
    assert.throws(() => loadFirstStageStateDict(dst, dict), (e: unknown) => e instanceof StateDictError && /decoder\.up\.9/.test(e.message));
    dict.delete('decoder.up.9.block.0.conv1.weight');
    dict.delete('decoder.conv_out.bias');
    assert.throws(() => loadFirstStageStateDict(dst, dict), /missing keys: "decoder\.conv_out\.bias"/);
    src.dispose();
    dst.dispose();
    loss.dispose();
  });
});
