// The library as a service uses it: load once, generate, abort, dispose.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { parseConfig } from '../src/config';
import { buildUNet } from '../src/models/diffusion';
import { loadPipeline } from '../src/pipeline';
import { native } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { saveCheckpoint } from '../src/train/checkpoint';
import { sync } from '../src/tensor/tensor';

// Storage is freed when the stream has run the last op that uses it: sync first.
async function liveBytes(): Promise<number> {
  await sync();
  return native().memory().liveBytes;
}

const YAML = `
model:
  base_learning_rate: 1.0e-4
  target: tdq_native.models.diffusion.DDPM
  params:
    timesteps: 100
    image_size: 16
    channels: 1
    unet_config:
      target: tdq_native.models.unet.UNetModel
      params: {image_size: 16, in_channels: 1, out_channels: 1, model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [2], num_head_channels: 32}
data: {target: tdq_native.data.Synthetic, params: {count: 8}}
training: {batch_size: 2, max_steps: 1}
`;

async function makeCheckpoint(): Promise<string> {
  const { config } = parseConfig(YAML, 'test.yaml');
  const unet = buildUNet(config.model.params.unet_config, new Generator(5));
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-pipe-')), 'model.safetensors');
  await saveCheckpoint(file, { config, model: unet });
  unet.dispose();
  return file;
}

describe('DiffusionPipeline', () => {
  it('generates deterministically, keeps the event loop free, reports progress and frees memory', async () => {
    const file = await makeCheckpoint();
    const before = await liveBytes();
    const pipe = await loadPipeline(file);
    let ticks = 0;
    const timer = setInterval(() => ++ticks, 1);
    const steps: number[] = [];
    const a = await pipe.generate({ n: 3, batchSize: 2, steps: 10, seed: 4, onProgress: (p) => steps.push(p.step) });
    clearInterval(timer);
    assert.deepEqual(a.shape, [3, 1, 16, 16]);
    assert.ok(a.data.every(Number.isFinite));
    assert.ok(ticks > 5, `the event loop turned only ${ticks} times while sampling`);
    assert.equal(steps.length, 20); // two batches of 10 steps
    const b = await pipe.generate({ n: 3, batchSize: 2, steps: 10, seed: 4 });
    assert.deepEqual(Buffer.from(b.data.buffer), Buffer.from(a.data.buffer));
    const c = await pipe.generate({ n: 3, batchSize: 2, steps: 10, seed: 5 });
    assert.notDeepEqual(Buffer.from(c.data.buffer), Buffer.from(a.data.buffer));
    pipe.dispose();
    assert.equal(await liveBytes(), before, 'dispose() must free every weight');
    await assert.rejects(pipe.generate({ n: 1 }), /after dispose/);
  });

  it('an AbortSignal stops generation with an AbortError and nothing leaks', async () => {
    const pipe = await loadPipeline(await makeCheckpoint());
    const before = await liveBytes();
    const ac = new AbortController();
    await assert.rejects(
      pipe.generate({ n: 2, steps: 50, onProgress: (p) => p.step === 3 && ac.abort(), signal: ac.signal }),
      (e: Error) => e.name === 'AbortError',
    );
    assert.equal(await liveBytes(), before);
    pipe.dispose();
  });

  it('bad input is a clear error, never a crash', async () => {
    await assert.rejects(loadPipeline('/nonexistent/model.safetensors'), /checkpoint not found: \/nonexistent/);
    const junk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-pipe-')), 'junk.safetensors');
    fs.writeFileSync(junk, 'not a safetensors file');
    await assert.rejects(loadPipeline(junk), /junk\.safetensors/);
    const pipe = await loadPipeline(await makeCheckpoint());
    await assert.rejects(pipe.generate({ n: 0 }), /n must be a positive integer/);
    await assert.rejects(pipe.generate({ n: 1, steps: 100000 }), RangeError);
    pipe.dispose();
  });
});
