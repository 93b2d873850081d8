import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import { CONFIG_LIMITS, ConfigError, parseConfig } from '../../src/config';

const root = path.resolve(__dirname, '..', '..', '..');
const fmnistText = fs.readFileSync(path.join(root, 'configs', 'fmnist-small.yaml'), 'utf8');

function message(text: string): string {
  try {
    parseConfig(text, 'big.yaml');
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.message;
  }
  assert.fail('expected a ConfigError');
}

describe('config size bounds', () => {
  const cases: [string, string, string, RegExp][] = [
    ['num_res_blocks', 'num_res_blocks: 1 ', `num_res_blocks: 100000 `, /unet_config\.params\.num_res_blocks: must be <= 64, got integer 100000/],
    ['model_channels', 'model_channels: 32', 'model_channels: 1048576', /unet_config\.params\.model_channels: must be <= 4096, got integer 1048576/],
    ['unet image_size', '        image_size: 32', '        image_size: 1000000', /unet_config\.params\.image_size: must be <= 4096/],
    ['channel_mult entry', 'channel_mult: [1, 2, 2]', 'channel_mult: [1, 2, 100000]', /channel_mult\[2\]: must be <= 64/],
    ['timesteps', 'timesteps: 1000', 'timesteps: 1000000000', /model\.params\.timesteps: must be <= 100000/],
  ];
  for (const [name, from, to, re] of cases) {
    it(`rejects a huge ${name}, naming the key and the bound`, () => {
      assert.ok(fmnistText.includes(from), `'${from}' not in fmnist-small.yaml`);
      assert.match(message(fmnistText.replace(from, to)), re);
    });
  }
  it('accepts the shipped config and values at the bounds', () => {
    assert.doesNotThrow(() => parseConfig(fmnistText, 'ok.yaml'));
    assert.doesNotThrow(() => parseConfig(fmnistText.replace('num_res_blocks: 1 ', `num_res_blocks: ${CONFIG_LIMITS.num_res_blocks} `), 'ok.yaml'));
  });
});
