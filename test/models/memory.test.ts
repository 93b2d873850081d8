import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { UNetConfigSchema } from '../../src/config/schema';
import { buildUNet } from '../../src/models/diffusion';
import {
  MemoryLimitError,
  checkRunMemory,
  countUNetParams,
  estimateActivationBytes,
  estimateRunMemory,
  memoryLimit,
  parseBytes,
} from '../../src/models/memory';
import { Generator } from '../../src/tensor/random';

const openai = (params: Record<string, unknown>) =>
  UNetConfigSchema.parse({ target: 'tdq_native.models.unet.UNetModel', params: { image_size: 16, in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2], attention_resolutions: [2], num_heads: 4, ...params } });
const ddpm = (params: Record<string, unknown>) =>
  UNetConfigSchema.parse({ target: 'tdq_native.models.ddpm_unet.DDPMUNet', params: { resolution: 16, in_channels: 3, out_ch: 3, ch: 32, num_res_blocks: 1, ch_mult: [1, 2], attn_resolutions: [8], ...params } });

describe('model memory estimate', () => {
  const cases: [string, { target: string; params: unknown }][] = [
    ['openai, attention at ds 2', openai({})],
    ['openai, 2 res blocks, 3 levels, classes, scale-shift, updown', openai({ num_res_blocks: 2, channel_mult: [1, 2, 2], attention_resolutions: [1, 4], num_classes: 10, use_scale_shift_norm: true, resblock_updown: true, num_head_channels: 32, num_heads: -1 })],
    ['openai, no conv resample', openai({ conv_resample: false, in_channels: 3, out_channels: 3 })],
    ['ddpm, attention at 8', ddpm({})],
    ['ddpm, 2 res blocks, 3 levels, no resample conv', ddpm({ num_res_blocks: 2, ch_mult: [1, 2, 2], attn_resolutions: [16, 4], resamp_with_conv: false })],
  ];
  for (const [name, cfg] of cases) {
    it(`counts the parameters of the built UNet without building it: ${name}`, () => {
      const unet = buildUNet(cfg, new Generator(0));
      try {
        assert.equal(countUNetParams(cfg), unet.numParameters());
      } finally {
        unet.dispose();
      }
    });
  }

  it('counts num_res_blocks: 100000 without allocating, and the run check refuses it naming bytes and limit', () => {
    // Past the schema's bound (which rejects it when a config is read): the count alone must not allocate.
    const base = openai({});
    const huge = { target: base.target, params: { ...base.params, num_res_blocks: 100000 } };
    const params = countUNetParams(huge);
    assert.ok(params > 1e9, `${params}`);
    const need = estimateRunMemory({ unet: huge, sampleShape: [1, 16, 16], batchSize: 16 });
    assert.throws(
      () => checkRunMemory('sampling', need, { bytes: 8 * 2 ** 30, source: 'test' }),
      (e: Error) => e instanceof MemoryLimitError && /would need about .*bytes/.test(e.message) && /limit of 8\.0 GiB \(8589934592 bytes\) \(test\)/.test(e.message),
    );
    const small = estimateRunMemory({ unet: openai({}), sampleShape: [1, 16, 16], batchSize: 16 });
    checkRunMemory('sampling', small, { bytes: 8 * 2 ** 30, source: 'test' });
  });

  it('activations grow linearly with the batch; held images add to outputs', () => {
    const cfg = openai({});
    assert.equal(estimateActivationBytes(cfg, 8), 8 * estimateActivationBytes(cfg, 1));
    const a = estimateRunMemory({ unet: cfg, sampleShape: [1, 16, 16], batchSize: 4 });
    const b = estimateRunMemory({ unet: cfg, sampleShape: [1, 16, 16], batchSize: 4, heldImages: 1000 });
    assert.equal(b.outputs - a.outputs, 1000 * 16 * 16 * 4);
  });

  it('parses limits from the flag, then the environment, else a share of total memory', () => {
    assert.equal(parseBytes('8G'), 8 * 2 ** 30);
    assert.equal(parseBytes('512MiB'), 512 * 2 ** 20);
    assert.equal(parseBytes('1e9'), 1e9);
    assert.throws(() => parseBytes('lots'), /expected bytes like 8G/);
    assert.throws(() => parseBytes('-1'), MemoryLimitError);
    const old = process.env.TDQ_MAX_MEMORY;
    try {
      process.env.TDQ_MAX_MEMORY = '2G';
      assert.deepEqual(memoryLimit(), { bytes: 2 * 2 ** 30, source: '$TDQ_MAX_MEMORY' });
      assert.equal(memoryLimit('1G').bytes, 2 ** 30);
      delete process.env.TDQ_MAX_MEMORY;
      assert.ok(memoryLimit().bytes > 0 && /% of this machine/.test(memoryLimit().source));
    } finally {
      if (old === undefined) delete process.env.TDQ_MAX_MEMORY;
      else process.env.TDQ_MAX_MEMORY = old;
    }
  });
});
