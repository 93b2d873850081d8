// The openaimodel.UNetModel keys of cross-attention UNets: use_spatial_transformer,
// transformer_depth, context_dim and legacy are accepted, checked together, and
// reach the model built from the config.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import { ConfigError, UNET_TARGET, parseConfig } from '../../src/config';
import { buildUNet } from '../../src/models/diffusion';
import { UNetModel } from '../../src/models/openai_unet';
import { SpatialTransformer } from '../../src/models/transformer';
import { Generator } from '../../src/tensor/random';

const fmnistText = fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), 'utf8');
const withKeys = (lines: string[]) =>
  fmnistText.replace(/^( +)num_head_channels: 32\n/m, (m, ind: string) => m + lines.map((l) => `${ind}${l}\n`).join(''));

function configError(text: string): ConfigError {
  try {
    parseConfig(text, 'test.yaml');
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    return e;
  }
  assert.fail('the config was accepted');
}

describe('config: cross-attention UNet keys', () => {
  it('accepts use_spatial_transformer, transformer_depth, context_dim, legacy; the built UNet has SpatialTransformers', () => {
    const { config } = parseConfig(withKeys(['use_spatial_transformer: true', 'transformer_depth: 2', 'context_dim: 16', 'legacy: false']), 'test.yaml');
    const u = config.model.params.unet_config;
    assert.equal(u.target, UNET_TARGET);
    if (u.target !== UNET_TARGET) return;
    assert.equal(u.params.use_spatial_transformer, true);
    assert.equal(u.params.transformer_depth, 2);
    assert.equal(u.params.context_dim, 16);
    assert.equal(u.params.legacy, false);
    const unet = buildUNet(u, new Generator(0)) as UNetModel;
    const sts = unet.namedModules().filter(([, m]) => m instanceof SpatialTransformer) as [string, SpatialTransformer][];
    assert.ok(sts.length > 0);
    for (const [, st] of sts) {
      assert.equal(st.blocks.length, 2);
      assert.equal(st.contextDim, 16);
    }
    unet.dispose();
  });

  it('defaults: no spatial transformer, depth 1, legacy true', () => {
    const { config } = parseConfig(fmnistText, 'test.yaml');
    const u = config.model.params.unet_config;
    if (u.target !== UNET_TARGET) assert.fail('not a UNetModel');
    assert.equal(u.params.use_spatial_transformer, false);
    assert.equal(u.params.transformer_depth, 1);
    assert.equal(u.params.legacy, true);
  });

  it('use_spatial_transformer and context_dim go together; bad values are named', () => {
    assert.match(configError(withKeys(['use_spatial_transformer: true'])).message, /context_dim: use_spatial_transformer needs context_dim/);
    assert.match(configError(withKeys(['context_dim: 16'])).message, /use_spatial_transformer: must be true when context_dim \(16\) is set/);
    assert.match(configError(withKeys(['use_spatial_transformer: true', 'context_dim: 16', 'transformer_depth: 0'])).message, /transformer_depth/);
    assert.match(configError(withKeys(['use_spatial_transformer: true', 'context_dim: -3'])).message, /context_dim/);
  });
});
