import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import {
  ConfigError, DDPM_TARGET, DDPM_UNET_TARGET, LDM_TARGET, LSUN_TARGET, SYNTHETIC_TARGET, UNET_TARGET, canonicalTarget, loadConfig,
  modelImageShape, parseConfig, parsePath,
} from '../../src/config';
import { LatentDiffusionSchema } from '../../src/config/latent_schema';
import { parseTrainSections } from '../../src/config/load';
import { datasetFromConfig, loaderFromConfig } from '../../src/data';
import { churchesYaml } from '../helpers/configs';

const root = path.resolve(__dirname, '..', '..', '..');
const configs = path.join(root, 'configs');
const fmnistText = fs.readFileSync(path.join(configs, 'fmnist-small.yaml'), 'utf8');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-config-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The 1-based line of the first line containing `needle`. */
function lineOf(text: string, needle: string): number {
  const i = text.split('\n').findIndex((l) => l.includes(needle));
  assert.ok(i >= 0, `'${needle}' not in the text`);
  return i + 1;
}

function configError(text: string, overrides?: string[]): ConfigError {
  try {
    parseConfig(text, 'test.yaml', { overrides });
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    return e;
  }
  assert.fail('the config was accepted');
}

describe('shipped configs', () => {
  it('fmnist-small: a small 1-channel UNet at 32 x 32 with attention at 8 x 8', () => {
    const { config: c, warnings } = loadConfig(path.join(configs, 'fmnist-small.yaml'));
    assert.deepEqual(warnings, []);
    assert.equal(c.model.target, DDPM_TARGET);
    assert.equal(c.model.params.image_size, 32);
    assert.equal(c.model.params.channels, 1);
    const u = c.model.params.unet_config;
    assert.equal(u.target, UNET_TARGET);
    if (u.target !== UNET_TARGET) return;
    assert.ok(u.params.model_channels >= 32 && u.params.model_channels <= 64);
    assert.deepEqual(u.params.channel_mult, [1, 2, 2]);
    assert.deepEqual(u.params.attention_resolutions, [4]);
    assert.equal(u.params.num_head_channels, 32);
    assert.equal(u.params.num_heads, -1);
    assert.deepEqual(modelImageShape(c.model), { channels: 1, size: 32 });
    assert.equal(c.data.target, 'tdq_native.data.FashionMNIST');
    assert.equal(c.training.ema.enabled, true);
  });

  it('ddpm-cifar10: Ho et al.\'s UNet and schedule', () => {
    const { config: c } = loadConfig(path.join(configs, 'ddpm-cifar10.yaml'));
    const u = c.model.params.unet_config;
    assert.equal(u.target, DDPM_UNET_TARGET);
    if (u.target !== DDPM_UNET_TARGET) return;
    assert.deepEqual(
      [u.params.ch, u.params.ch_mult, u.params.attn_resolutions, u.params.num_res_blocks, u.params.dropout],
      [128, [1, 2, 2, 2], [16], 2, 0.1],
    );
    assert.deepEqual([c.model.params.timesteps, c.model.params.linear_start, c.model.params.linear_end], [1000, 1e-4, 0.02]);
    assert.equal(c.model.params.beta_schedule, 'sqrt_linear');
  });

  it('ldm-churches: the CompVis LSUN-churches UNet on kl-f8 latents', () => {
    const { config: c } = loadConfig(path.join(configs, 'ldm-churches.yaml'));
    assert.equal(c.model.target, LDM_TARGET);
    const u = c.model.params.unet_config;
    if (u.target !== UNET_TARGET) return assert.fail('expected the openai UNet');
    const p = u.params;
    assert.deepEqual(
      [p.image_size, p.in_channels, p.out_channels, p.model_channels, p.attention_resolutions, p.num_res_blocks, p.channel_mult, p.num_heads, p.use_scale_shift_norm, p.resblock_updown],
      [32, 4, 4, 192, [1, 2, 4, 8], 2, [1, 2, 2, 4, 4], 8, true, true],
    );
    assert.deepEqual(modelImageShape(c.model), { channels: 3, size: 256 });
  });
});

describe('config validation', () => {
  it('accepts CompVis class paths as aliases and replaces them with ours', () => {
    const text = fmnistText.replace('tdq_native.models.unet.UNetModel', 'ldm.modules.diffusionmodules.openaimodel.UNetModel')
      .replace('tdq_native.models.diffusion.DDPM', 'ldm.models.diffusion.ddpm.DDPM');
    const { config: c } = parseConfig(text, 'x.yaml');
    assert.equal(c.model.target, DDPM_TARGET);
    assert.equal(c.model.params.unet_config.target, UNET_TARGET);
    assert.equal(canonicalTarget('ldm.models.diffusion.ddpm.LatentDiffusion'), LDM_TARGET);
  });

  it('names the file, line, key path and types of a wrong value', () => {
    const text = fmnistText.replace('channel_mult: [1, 2, 2]', 'channel_mult: [1, two, 2]');
    const e = configError(text);
    assert.equal(e.issues.length, 1);
    assert.deepEqual(e.issues[0].path, ['model', 'params', 'unet_config', 'params', 'channel_mult', 1]);
    assert.equal(e.issues[0].line, lineOf(text, 'channel_mult:'));
    assert.match(e.message, /^test\.yaml:\d+:\d+: model\.params\.unet_config\.params\.channel_mult\[1\]: expected number, got string "two"$/);
  });

  it('rejects an unknown key with a suggestion, and says when a CompVis key is unsupported', () => {
    const text = fmnistText.replace(/num_res_blocks: \d+/, 'num_res_block: 2');
    const e = configError(text);
    const msgs = e.message.split('\n');
    assert.ok(msgs.some((m) => /model\.params\.unet_config\.params\.num_res_block: unknown key \(did you mean num_res_blocks\?\)/.test(m)), e.message);
    assert.ok(msgs.some((m) => /model\.params\.unet_config\.params\.num_res_blocks: required/.test(m)), e.message);
    const e2 = configError(fmnistText.replace('    timesteps: 1000', '    timesteps: 1000\n    scheduler_config: {}'));
    assert.match(e2.message, /model\.params\.scheduler_config: only ldm\.lr_scheduler\.LambdaLinearScheduler \(with params\) is implemented/);
    const e3 = configError(fmnistText + 'extra_section: 1\n');
    assert.match(e3.message, /extra_section: unknown key \(expected one of model, data, training, lightning\)/);
  });

  it('reports bad enum values, numbers out of range and unknown targets', () => {
    assert.match(configError(fmnistText.replace('loss_type: l2', 'loss_type: l3')).message, /model\.params\.loss_type: expected one of "l1", "l2", got string "l3"/);
    assert.match(configError(fmnistText.replace('batch_size: 64', 'batch_size: 0')).message, /training\.batch_size: must be >= 1, got integer 0/);
    assert.match(configError(fmnistText.replace('batch_size: 64', 'batch_size: 6.5')).message, /training\.batch_size: expected integer, got number 6\.5/);
    const e = configError(fmnistText.replace('target: tdq_native.models.unet.UNetModel', 'target: foo.Bar'));
    assert.match(e.message, /model\.params\.unet_config\.target: unknown target "foo\.Bar"; expected one of "tdq_native\.models\.unet\.UNetModel"/);
  });

  it('checks the UNet against itself and the model', () => {
    const att = configError(fmnistText.replace('attention_resolutions: [4]', 'attention_resolutions: [16]'));
    assert.match(att.message, /attention_resolutions\[0\]: 16 is not a downsampling factor of this UNet \(reachable: 1, 2, 4/);
    const inCh = configError(fmnistText.replace('in_channels: 1', 'in_channels: 3'));
    assert.match(inCh.message, /model\.params\.unet_config\.params\.in_channels: must equal model\.params\.channels \(1\)/);
    const heads = configError(fmnistText.replace('num_head_channels: 32', 'num_head_channels: 48'));
    assert.match(heads.message, /num_head_channels: must divide the 64 channels of attention level 2/);
    const none = configError(fmnistText.replace('        num_head_channels: 32\n', ''));
    assert.match(none.message, /num_heads: set num_heads or num_head_channels/);
    const gn = configError(fmnistText.replace('model_channels: 32', 'model_channels: 40'));
    assert.match(gn.message, /channel_mult\[0\]: level channels model_channels x 1 = 40 must be divisible by 32/);
    const sched = configError(fmnistText.replace('linear_end: 0.02', 'linear_end: 0.00001'));
    assert.match(sched.message, /model\.params\.linear_end: must be greater than linear_start/);
    const cls = configError(fmnistText.replace('# num_classes: 10', 'num_classes: 5'));
    assert.match(cls.message, /num_classes: tdq_native\.data\.FashionMNIST has 10 classes, more than num_classes 5/);
    assert.doesNotThrow(() => parseConfig(fmnistText.replace('# num_classes: 10', 'num_classes: 10'), 'x.yaml'));
  });

  it('reports YAML syntax errors and duplicate keys with their line', () => {
    const e = configError('model:\n  a: [1, 2\n');
    assert.match(e.message, /^test\.yaml:\d+:\d+: YAML syntax error/);
    const dup = configError('training:\n  batch_size: 1\n  batch_size: 2\n');
    assert.match(dup.message, /test\.yaml:3:\d+: YAML syntax error: Map keys must be unique/);
    assert.match(configError('').message, /test\.yaml: the file is empty/);
    assert.match(configError('- 1\n- 2\n').message, /expected a mapping at the top level, got a list/);
  });

  it('applies --set overrides and blames them in errors', () => {
    const { config: c } = parseConfig(fmnistText, 'x.yaml', {
      overrides: ['training.max_steps=100', 'model.params.unet_config.params.channel_mult[2]=4', 'training.ema.enabled=false'],
    });
    assert.equal(c.training.max_steps, 100);
    assert.equal(c.training.ema.enabled, false);
    if (c.model.params.unet_config.target === UNET_TARGET) assert.deepEqual(c.model.params.unet_config.params.channel_mult, [1, 2, 4]);
    const e = configError(fmnistText, ['training.max_steps=abc']);
    assert.match(e.message, /^test\.yaml: training\.max_steps: expected number, got string "abc" \(from --set training\.max_steps=abc\)$/);
    assert.match(configError(fmnistText, ['nonsense']).message, /bad override 'nonsense': expected key\.path=value/);
    assert.match(configError(fmnistText, ['a..b=1']).message, /bad config key path/);
    assert.deepEqual(parsePath('a.b[2].c'), ['a', 'b', 2, 'c']);
  });

  it('lists the accepted-but-ignored CompVis keys in one warning', () => {
    const text = `
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.DDPM
  params:
    image_size: 16
    channels: 3
    monitor: val/loss_simple_ema
    log_every_t: 200
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {image_size: 16, in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, attention_resolutions: [], channel_mult: [1, 2], num_heads: 1, use_checkpoint: true}
data:
  target: synthetic
training:
  batch_size: 4
  max_steps: 10
`;
    const r = parseConfig(text, 'z.yaml');
    assert.deepEqual(r.warnings, ['z.yaml: accepted for CompVis configs but ignored: model.params.monitor, model.params.log_every_t, model.params.unet_config.params.use_checkpoint']);
  });

  it('fills defaults and warns about an ignored lightning section', () => {
    const text = `
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.DDPM
  params:
    image_size: 16
    channels: 3
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {image_size: 16, in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, attention_resolutions: [], channel_mult: [1, 2], num_heads: 1}
data:
  target: synthetic
training:
  batch_size: 4
  max_steps: 10
lightning:
  trainer: {benchmark: true}
`;
    const r = parseConfig(text, 'y.yaml');
    assert.deepEqual(r.warnings, ['y.yaml: upstream sections: ignored: lightning.trainer.benchmark']);
    const c = r.config;
    assert.deepEqual([c.model.params.timesteps, c.model.params.beta_schedule, c.model.params.parameterization, c.model.params.loss_type], [1000, 'linear', 'eps', 'l2']);
    assert.equal(c.data.target, SYNTHETIC_TARGET);
    assert.deepEqual(c.training.optimizer, { type: 'adam', betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0 });
    assert.equal(c.training.grad_clip, 1);
    // The dataset and loader a config describes.
    const ds = datasetFromConfig(c);
    assert.deepEqual([ds.channels, ds.height, ds.width, ds.length], [3, 16, 16, 1024]);
    const loader = loaderFromConfig(c, ds);
    assert.deepEqual(loader.nextArrays().shape, [4, 3, 16, 16]);
  });

  it('reports a missing config file and a missing dataset clearly', () => {
    assert.throws(() => loadConfig(path.join(tmp, 'none.yaml')), /none\.yaml: config file not found/);
    const { config } = parseConfig(fmnistText, 'x.yaml');
    assert.throws(() => datasetFromConfig(config, { dataDir: path.join(tmp, 'no-data') }), (e: Error) => {
      assert.ok(e.message.includes(path.join(tmp, 'no-data', 'train-images-idx3-ubyte.gz')), e.message);
      assert.match(e.message, /apt-get install dataset-fashion-mnist/);
      return true;
    });
  });
});

describe('upstream LDM configs, unchanged', () => {
  const upstream = churchesYaml({
    unet: { image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [1, 2], num_res_blocks: 1, channel_mult: [1, 2], num_heads: 8, use_scale_shift_norm: true, resblock_updown: true },
    batchSize: 96,
    warmUpSteps: 10000,
    validation: true,
    callbacks: true,
    trainer: { benchmark: true },
  });
  /** The same without the keys no LDM code reads: what the schema accepts. */
  const ours = upstream.split('\n').filter((l) => !/^\s+(log_every_t|monitor|first_stage_key|cond_stage_key|num_timesteps_cond|cond_stage_trainable|concat_mode|lossconfig):/.test(l)).join('\n');

  it('for training (the LDM reader): the DataModule, the LambdaLinear schedule and Lightning fields land in data and training; the rest is listed', () => {
    assert.throws(() => parseTrainSections(upstream, 'churches.yaml', {}, LatentDiffusionSchema), /training\.max_steps: required: upstream leaves the length of a run to Lightning; pass --set training\.max_steps=N/);
    const r = parseTrainSections(upstream, 'churches.yaml', { overrides: ['training.max_steps=500'] }, LatentDiffusionSchema);
    assert.equal(r.data.target, LSUN_TARGET);
    assert.deepEqual(r.data.params, { txt_file: 'data/lsun/church_outdoor_train.txt', data_root: 'data/lsun/churches', size: 16, flip_p: 0.5, interpolation: 'bicubic' });
    assert.deepEqual([r.training.batch_size, r.training.max_steps, r.training.lr_schedule], [96, 500, 'lambda_linear']);
    assert.deepEqual(r.training.lambda_linear, { warm_up_steps: [10000], cycle_lengths: [10000000000000], f_start: [1e-6], f_max: [1], f_min: [1] });
    assert.equal(r.warnings.length, 1, r.warnings.join('\n'));
    assert.match(r.warnings[0], /training\.batch_size = 96 from data\.params\.batch_size; training\.lr_schedule = "lambda_linear" from model\.params\.scheduler_config; ignored: data\.params\.num_workers, data\.params\.wrap, data\.params\.validation, lightning\.trainer\.benchmark, lightning\.callbacks/);
    assert.deepEqual(r.model.ignored.filter((k) => k.startsWith('params.')), ['params.monitor', 'params.log_every_t', 'params.first_stage_key', 'params.cond_stage_key']);
  });

  it('the schema refuses, naming file:line and key, the upstream keys no LDM code reads', () => {
    const e = configError(upstream, ['training.max_steps=500']);
    const unread = [
      'model.params.log_every_t', 'model.params.monitor', 'model.params.first_stage_key', 'model.params.cond_stage_key', 'model.params.num_timesteps_cond',
      'model.params.cond_stage_trainable', 'model.params.concat_mode', 'model.params.first_stage_config.params.monitor', 'model.params.first_stage_config.params.lossconfig',
    ];
    assert.deepEqual(e.issues.map((i) => i.path.join('.')).sort(), [...unread].sort(), e.message);
    for (const k of unread) {
      const key = k.split('.').pop()!;
      const line = k.includes('first_stage_config') ? lineOf(upstream.slice(upstream.indexOf('first_stage_config:')), key) + lineOf(upstream, 'first_stage_config:') - 1 : lineOf(upstream, `    ${key}:`);
      assert.match(e.message, new RegExp(`^test\\.yaml:${line}:\\d+: ${k.replace(/\./g, '\\.')}: not read for a LatentDiffusion \\(.+\\); remove it$`, 'm'));
    }
  });

  it('for sampling: only the model section is needed', () => {
    const c = parseConfig(ours, 'churches.yaml', { purpose: 'model' }).config;
    assert.equal(c.model.params.image_size, 8);
    const noData = ours.slice(0, ours.indexOf('data:'));
    assert.equal(parseConfig(noData, 'config.yaml', { purpose: 'model' }).config.model.params.channels, 4);
  });

  it('a dataset that is not implemented is an error naming it', () => {
    const t = upstream.replace('ldm.data.lsun.LSUNChurchesTrain', 'ldm.data.imagenet.ImageNetTrain');
    assert.throws(() => parseConfig(t, 'cin.yaml', { overrides: ['training.max_steps=1'] }), /cin\.yaml:\d+:\d+: data\.params\.train\.target: ldm\.data\.imagenet\.ImageNetTrain is not implemented/);
    const v = upstream.replace('ldm.lr_scheduler.LambdaLinearScheduler', 'ldm.lr_scheduler.LambdaWarmUpCosineScheduler');
    assert.throws(() => parseConfig(v, 'x.yaml', { overrides: ['training.max_steps=1'] }), /model\.params\.scheduler_config: only ldm\.lr_scheduler\.LambdaLinearScheduler/);
  });
});

describe('keys the schema accepts are read, warned about, or refused', () => {
  const withParams = (lines: string) => fmnistText.replace('    timesteps: 1000\n', `    timesteps: 1000\n${lines}\n`);

  it('refuses keys it does not read, naming file:line, the key and that it is not supported', () => {
    const cases: [string, string, RegExp][] = [
      ['    ckpt_path: models/x.safetensors', 'ckpt_path', /model\.params\.ckpt_path: not supported: the config does not load weights; pass them with --ckpt/],
      ['    ignore_keys: [model_ema.]', 'ignore_keys', /model\.params\.ignore_keys: not supported/],
    ];
    for (const [line, key, re] of cases) {
      const text = withParams(line);
      const e = configError(text);
      assert.match(e.message, new RegExp(`^test\\.yaml:${lineOf(text, key)}:\\d+: ${re.source}`));
    }
    const t = fmnistText.replace('resblock_updown: false', 'resblock_updown: false\n        use_new_attention_order: true');
    assert.match(configError(t).message, new RegExp(`^test\\.yaml:${lineOf(t, 'use_new_attention_order')}:\\d+: model\\.params\\.unet_config\\.params\\.use_new_attention_order: true is not supported`));
    // Their harmless values, as saved checkpoints' configs carry them, still load.
    assert.doesNotThrow(() => parseConfig(withParams('    ignore_keys: []').replace('resblock_updown: false', 'resblock_updown: false\n        use_new_attention_order: false'), 'ok.yaml'));
  });

  it('warns, naming them, about upstream keys that change nothing here (logging, Lightning trainer settings)', () => {
    const text = `${withParams('    log_every_t: 200')}\nlightning:\n  trainer: {benchmark: true, precision: 32}\n`;
    const r = parseConfig(text, 'w.yaml');
    assert.deepEqual(r.warnings, ['w.yaml: upstream sections: ignored: lightning.trainer.benchmark, lightning.trainer.precision', 'w.yaml: accepted for CompVis configs but ignored: model.params.log_every_t']);
  });

  it('model.params.clip_denoised is the sampling default of the pipeline; an explicit option wins', async () => {
    const { DiffusionPipeline } = await import('../../src/pipeline');
    const { PixelDiffusion, buildUNet } = await import('../../src/models/diffusion');
    const { Generator } = await import('../../src/tensor/random');
    for (const [line, want] of [['', true], ['    clip_denoised: false', false]] as const) {
      const { config } = parseConfig(withParams(line), 'c.yaml');
      const pipe = new DiffusionPipeline(config, new PixelDiffusion(config.model, buildUNet(config.model.params.unet_config, new Generator(1))), 'c.yaml');
      assert.equal(pipe.samplerOptions({}).clipDenoised, want);
      assert.equal(pipe.samplerOptions({ clipDenoised: !want }).clipDenoised, !want);
      pipe.dispose();
    }
  });
});

describe('the LatentDiffusion branch is no wider than the LDM reader', () => {
  const ldmFile = path.join(configs, 'ldm-churches.yaml');
  const ldmText = fs.readFileSync(ldmFile, 'utf8');
  const reader = (text: string) => parseTrainSections(text, 'ldm.yaml', {}, LatentDiffusionSchema);

  it('the shipped LDM config: both accept it and read the same values', () => {
    const c = parseConfig(ldmText, 'ldm.yaml').config;
    const r = reader(ldmText).model;
    if (c.model.target !== LDM_TARGET) return assert.fail('expected a LatentDiffusion');
    const p = c.model.params;
    assert.deepEqual(
      [p.timesteps, p.beta_schedule, p.linear_start, p.linear_end, p.loss_type, p.parameterization, p.image_size, p.channels, p.scale_factor, p.scale_by_std],
      [r.params.timesteps, r.params.beta_schedule, r.params.linear_start, r.params.linear_end, r.params.loss_type, r.params.parameterization, r.params.image_size, r.params.channels, r.params.scale_factor, r.params.scale_by_std],
    );
    assert.equal(r.conditioningKey, null);
    assert.deepEqual(r.ignored, []);
  });

  it('values the reader refuses, the schema refuses too', () => {
    const cases: [string, string, RegExp][] = [
      ['beta_schedule: linear', 'beta_schedule: sqrt', /model\.params\.beta_schedule: expected one of "linear", "sqrt_linear", "cosine", got string "sqrt"/],
      ['parameterization: eps', 'parameterization: v', /model\.params\.parameterization: expected one of "eps", "x0", got string "v"/],
      ['timesteps: 1000', 'timesteps: 1', /model\.params\.timesteps: must be >= 2, got integer 1/],
      ['    cond_stage_config: __is_unconditional__\n', '', /model\.params\.cond_stage_config: required/],
      ['          ch: 128', '          ch: 48', /model\.params\.first_stage_config\.params\.ddconfig\.ch: 48 channels \(ch 48 x 1\) are not divisible into 32 GroupNorm groups/],
      ['    scale_by_std: true', '    scale_by_std: true\n    scale_factor: 0.18215', /model\.params\.scale_factor: scale_by_std sets the scale factor from the data; scale_factor must stay 1/],
    ];
    for (const [from, to, re] of cases) {
      assert.ok(ldmText.includes(from), from);
      const text = ldmText.replace(from, to);
      assert.throws(() => reader(text), ConfigError, `the reader accepts ${JSON.stringify(to)}`);
      assert.match(configError(text).message, new RegExp(`^test\\.yaml(:\\d+:\\d+)?: ${re.source}`, 'm'));
    }
  });

  it('a key accepted and not read is refused, naming the file, line and key', () => {
    const text = ldmText.replace('    scale_by_std: true\n', '    scale_by_std: true\n    monitor: val/loss_simple_ema\n');
    const e = configError(text);
    assert.equal(e.message, `test.yaml:${lineOf(text, 'monitor:')}:5: model.params.monitor: not read for a LatentDiffusion (an upstream logging key); remove it`);
    const u = ldmText.replace('        resblock_updown: true\n', '        resblock_updown: true\n        use_checkpoint: true\n');
    assert.match(configError(u).message, new RegExp(`^test\\.yaml:${lineOf(u, 'use_checkpoint')}:\\d+: model\\.params\\.unet_config\\.params\\.use_checkpoint: not read for a LatentDiffusion`));
    // The pixel branch still takes it (a warning says it changes nothing).
    assert.doesNotThrow(() => parseConfig(fmnistText.replace('resblock_updown: false', 'resblock_updown: false\n        use_checkpoint: true'), 'ok.yaml'));
  });
});
