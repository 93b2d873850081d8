// The library as a service uses it: load once, generate, abort, dispose.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import path from 'node:path';
import { describe, it } from 'node:test';

import { parseConfig } from '../src/config';
import { buildUNet, type Denoiser, PixelDiffusion } from '../src/models/diffusion';
import { DiffusionPipeline, type GeneratedImages, loadPipeline } from '../src/pipeline';
import { resolveQuantConfig } from '../src/quant/config';
import { quantizeModel } from '../src/quant/quantize_model';
import { native } from '../src/tensor/native';
import { Generator } from '../src/tensor/random';
import { saveCheckpoint } from '../src/train/checkpoint';
import { fromArray, sync } from '../src/tensor/tensor';

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

  it('concurrent generate() calls: a kernel error in one rejects only that call; the others equal their sequential results', { timeout: 300_000 }, async () => {
    const a = await loadPipeline();
    const b = await loadPipeline();
    const optsA = { n: 2, steps: 4, seed: 7 }, optsB = { n: 3, batchSize: 2, steps: 2, seed: 8 };
    const seqA = await a.generate(optsA);
    const seqB = await b.generate(optsB);
    // A quantized copy of the shipped model with one weight step of NaN: its
    // fake_quant kernel throws at sampling time (as a corrupt checkpoint would).
    const base = await loadPipeline();
    const qm = quantizeModel(base.diffusion.unet as never, resolveQuantConfig({ nBitW: 8, nBitA: 8 }), {
      timesteps: base.diffusion.schedule.numTimesteps, gen: new Generator(0),
    });
    const key = [...qm.stateDict().keys()].find((k) => k.endsWith('.weight_quant.step'))!;
    const shape = qm.stateDict().get(key)!.shape;
    const zero = fromArray(new Float32Array(shape.reduce((x, y) => x * y, 1)).fill(NaN), shape);
    qm.loadStateDict(new Map([[key, zero]]), { strict: false });
    zero.dispose();
    qm.eval();
    const poisoned = new DiffusionPipeline(base.config, new PixelDiffusion(base.config.model, qm as unknown as Denoiser), 'poisoned');
    const isStepError = (e: unknown) => e instanceof RangeError && /^fake_quant_forward: quantizer step 'step'.* = nan must be positive/.test(e.message);
    const same = (x: GeneratedImages, y: GeneratedImages) => assert.deepEqual(Buffer.from(x.data.buffer), Buffer.from(y.data.buffer));
    for (let round = 0; round < 2; ++round) {
      const r = await Promise.allSettled([poisoned.generate(optsA), a.generate(optsA), b.generate(optsB), poisoned.generate(optsB), a.generate(optsA)]);
      for (const i of [0, 3]) assert.ok(r[i].status === 'rejected' && isStepError(r[i].reason), `call ${i}: ${r[i].status === 'rejected' ? (r[i] as PromiseRejectedResult).reason : 'resolved'}`);
      for (const i of [1, 2, 4]) assert.equal(r[i].status, 'fulfilled', `call ${i}: ${(r[i] as PromiseRejectedResult).reason}`);
      same((r[1] as PromiseFulfilledResult<GeneratedImages>).value, seqA);
      same((r[2] as PromiseFulfilledResult<GeneratedImages>).value, seqB);
      same((r[4] as PromiseFulfilledResult<GeneratedImages>).value, seqA);
    }
    same(await b.generate(optsB), seqB);
    for (const p of [a, b, poisoned]) p.dispose();
  });

  it('generate() never blocks the event loop, even with the obsolete queue cap set', { timeout: 300_000 }, async (t) => {
    const load = os.loadavg()[0], cores = os.cpus().length;
    if (load > cores) return t.skip(`the machine is overloaded (load average ${load.toFixed(1)} > ${cores} cores): event-loop delays would measure the scheduler`);
    const pipe = await loadPipeline();
    await pipe.generate({ n: 1, steps: 1 }); // warm up (first-use compilation, caches)
    native().setMaxQueuedBytes(1); // used to make queuing wait for the engine
    const h = monitorEventLoopDelay({ resolution: 1 });
    try {
      h.enable();
      await pipe.generate({ n: 4, steps: 5, seed: 1 });
      h.disable();
    } finally {
      native().setMaxQueuedBytes(0);
      pipe.dispose();
    }
    const maxMs = h.max / 1e6;
    assert.ok(maxMs < 20, `the event loop was blocked for up to ${maxMs.toFixed(1)} ms while sampling (p99 ${(h.percentile(99) / 1e6).toFixed(1)} ms)`);
  });

  it('an onProgress callback whose promise rejects makes generate() reject with its error, without crashing', async () => {
    const pipe = await loadPipeline(await makeCheckpoint());
    const before = await liveBytes();
    let calls = 0;
    await assert.rejects(
      pipe.generate({ n: 2, steps: 20, onProgress: async (p) => { ++calls; if (p.step === 2) throw new Error('progress sink failed'); } }),
      /progress sink failed/,
    );
    assert.ok(calls < 20, `sampling should stop soon after the rejection, ran ${calls} steps`);
    // A rejection that arrives after the last step still decides the result.
    await assert.rejects(
      pipe.generate({ n: 1, steps: 2, onProgress: (p) => (p.step === 2 ? new Promise((_, reject) => setTimeout(() => reject(new Error('late failure')), 30)) : undefined) }),
      /late failure/,
    );
    // A synchronous throw too.
    await assert.rejects(pipe.generate({ n: 1, steps: 2, onProgress: () => { throw new TypeError('sync failure'); } }), /sync failure/);
    assert.equal(await liveBytes(), before, 'nothing leaks');
    const ok = await pipe.generate({ n: 1, steps: 2, onProgress: async () => {} });
    assert.ok(ok.data.every(Number.isFinite));
    pipe.dispose();
  });
});
