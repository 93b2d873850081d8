// The CUDA backend from JS, against the CPU backend: tensor round trips, each
// op the UNets use (forward and backward), a tiny UNet forward / backward, a
// DDIM sample, a quantized forward, device memory freed by dispose, and out
// of memory as a RangeError. These run where a GPU works (scripts/gpu-bench.sh
// runs them with TDQ_REQUIRE_GPU=1) and skip with the reason elsewhere.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import { loadConfig } from '../../src/config';
import { sample } from '../../src/diffusion/samplers';
import { buildUNet, scheduleFromConfig } from '../../src/models/diffusion';
import { calibrate } from '../../src/quant/calibrate';
import { resolveQuantConfig } from '../../src/quant/config';
import { backward, noGrad } from '../../src/tensor/autograd';
import type { Device } from '../../src/tensor/native';
import { native } from '../../src/tensor/native';
import * as ops from '../../src/tensor/ops';
import { Generator } from '../../src/tensor/random';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { cudaSkip } from '../helpers/gpu';

const skip = cudaSkip();

function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed * 2654435761 + 12345;
  for (let i = 0; i < n; ++i) {
    s = (s * 1103515245 + 12345) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

function maxRelErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 1e-6;
  for (let i = 0; i < a.length; ++i) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/**
 * fn on both devices from the same inputs: the outputs, and the gradients of
 * sum(out * w) (w a fixed random weight) with respect to every input, agree.
 */
function agree(name: string, shapes: number[][], fn: (xs: Tensor[]) => Tensor, tol = 1e-4, grads = true): void {
  const data = shapes.map((s, i) => randomArray(s.reduce((x, y) => x * y, 1), i + 1));
  const run = (device: Device) => {
    const xs = shapes.map((s, i) => {
      const t = fromArray(data[i], s, 'float32', device);
      t.requiresGrad = grads;
      return t;
    });
    const y = fn(xs);
    const w = fromArray(randomArray(y.size, 99), y.shape, 'float32', device);
    const out = y.dataSync() as Float32Array;
    let gs: Float32Array[] = [];
    if (grads) {
      backward(ops.sum(ops.mul(y, w)));
      gs = xs.map((x) => (x.grad ? (x.grad.dataSync() as Float32Array) : new Float32Array(0)));
    }
    for (const x of xs) {
      x.grad?.dispose();
      x.dispose();
    }
    return { out, gs };
  };
  const c = run('cpu'), g = run('cuda');
  const e = maxRelErr(g.out, c.out);
  assert.ok(e <= tol, `${name}: forward differs by ${e} (tolerance ${tol})`);
  c.gs.forEach((gc, i) => {
    const eg = maxRelErr(g.gs[i], gc);
    assert.ok(eg <= tol * 10, `${name}: gradient of input ${i} differs by ${eg}`);
  });
}

function tinyConfig() {
  const overrides = ['model_channels=32', 'channel_mult=[1,2]', 'attention_resolutions=[2]'].map((o) => `model.params.unet_config.params.${o}`);
  return loadConfig(path.resolve(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), { overrides }).config;
}

/** The ops (by name) that fn runs, from the engine's profile. */
async function opsUsed(fn: () => Promise<void>): Promise<string[]> {
  native().setProfiling(true);
  try {
    await fn();
    return Object.keys(native().profile()).sort();
  } finally {
    native().setProfiling(false);
  }
}

describe('CUDA backend from JS (vs the CPU backend)', { skip }, () => {
  it('every op of a tiny UNet training step and DDIM sample has a CUDA kernel', async () => {
    const config = tinyConfig();
    const used = await opsUsed(async () => {
      const m = buildUNet(config.model.params.unet_config, new Generator(0));
      const x = fromArray(randomArray(2 * 32 * 32, 1), [2, 1, 32, 32]);
      backward(ops.mean(ops.square(m.forward(x, fromArray([3, 700], [2])))));
      const s = await sample((x, t) => m.forward(x, t), { sampler: 'ddim', steps: 2, schedule: scheduleFromConfig(config.model.params), shape: [1, 1, 32, 32], seed: 0 });
      await s.data();
      m.dispose();
    });
    const onCuda = new Set(native().info().ops.filter((o) => o.cuda).map((o) => o.name));
    const missing = used.filter((op) => !onCuda.has(op));
    assert.deepEqual(missing, [], `ops used without a CUDA kernel: ${missing.join(', ')}`);
  });

  it('tensors go up and come back unchanged, every dtype', () => {
    const cases: [Parameters<typeof fromArray>[2], ArrayLike<number>][] = [
      ['float32', randomArray(1000, 1)], ['float16', Uint16Array.from({ length: 1000 }, (_, i) => (i * 37) & 0x7bff)],
      ['int8', Int8Array.from({ length: 1000 }, (_, i) => (i % 255) - 127)], ['uint8', Uint8Array.from({ length: 1000 }, (_, i) => i % 256)],
      ['int32', Int32Array.from({ length: 1000 }, (_, i) => i * 1000003)],
    ];
    for (const [dtype, data] of cases) {
      const g = fromArray(data, [10, 100], dtype, 'cuda');
      assert.equal(g.device, 'cuda');
      assert.deepEqual(Array.from(g.dataSync()), Array.from(data), `${dtype}`);
      const back = g.to('cpu');
      assert.deepEqual(Array.from(back.dataSync()), Array.from(data));
      g.dispose();
      back.dispose();
    }
  });

  it('elementwise, activations and reductions', () => {
    agree('add (broadcast)', [[4, 3, 5], [3, 1]], ([a, b]) => ops.add(a, b));
    agree('sub', [[4, 7], [4, 7]], ([a, b]) => ops.sub(a, b));
    agree('mul (broadcast)', [[2, 3, 4, 4], [2, 3, 1, 1]], ([a, b]) => ops.mul(a, b));
    agree('div', [[64]], ([a]) => ops.div(a, ops.addScalar(ops.mul(a, a), 1)));
    agree('silu', [[3, 1000]], ([a]) => ops.silu(a));
    agree('gelu', [[3, 1000]], ([a]) => ops.gelu(a));
    agree('softmax', [[6, 77]], ([a]) => ops.softmax(ops.scale(a, 4), -1));
    agree('sum / mean', [[5, 6, 7]], ([a]) => ops.add(ops.sum(a, [1]), ops.mean(a, [1])));
  });

  it('normalisations, convolutions, matmuls and attention', () => {
    agree('group_norm', [[2, 32, 8, 8], [32], [32]], ([x, w, b]) => ops.groupNorm(x, 8, w, b), 1e-4);
    agree('layer_norm', [[2, 16, 64], [64], [64]], ([x, w, b]) => ops.layerNorm(x, w, b), 1e-4);
    agree('conv2d 3x3 pad 1', [[2, 16, 12, 12], [24, 16, 3, 3], [24]], ([x, w, b]) => ops.conv2d(x, w, b, { padding: 1 }), 1e-4);
    agree('conv2d 3x3 stride 2', [[2, 8, 13, 13], [8, 8, 3, 3], [8]], ([x, w, b]) => ops.conv2d(x, w, b, { stride: 2, padding: 1 }), 1e-4);
    agree('conv2d 1x1', [[2, 32, 7, 7], [16, 32, 1, 1], [16]], ([x, w, b]) => ops.conv2d(x, w, b), 1e-4);
    agree('linear', [[7, 33], [19, 33], [19]], ([x, w, b]) => ops.linear(x, w, b), 1e-4);
    agree('matmul (batched)', [[3, 17, 29], [3, 29, 13]], ([a, b]) => ops.matmul(a, b), 1e-4);
    agree('attention', [[2, 4, 37, 16], [2, 4, 37, 16], [2, 4, 37, 16]], ([q, k, v]) => ops.scaledDotProductAttention(q, k, v), 1e-4);
  });

  it('fake quantization (LSQ backward)', () => {
    // step = s^2 + 0.01 > 0; the gradient reaches x (straight-through) and s (LSQ).
    agree('fake_quant per-tensor', [[4, 256], [1]], ([x, s]) => ops.fakeQuantize(x, ops.addScalar(ops.mul(s, s), 0.01), { bits: 8, signed: true, granularity: 'tensor' }), 1e-5);
    agree('fake_quant per-channel', [[4, 8, 5, 5], [4]], ([x, s]) => ops.fakeQuantize(x, ops.addScalar(ops.mul(s, s), 0.01), { bits: 4, signed: true, granularity: 'channel', axis: 0 }), 1e-5);
  });

  it('a tiny UNet: forward and the gradients of every parameter', () => {
    const config = tinyConfig();
    const [cpu, gpu] = [buildUNet(config.model.params.unet_config, new Generator(0)), buildUNet(config.model.params.unet_config, new Generator(0))];
    gpu.to('cuda');
    assert.equal(gpu.device(), 'cuda');
    const x = randomArray(2 * 32 * 32, 5);
    const run = (m: typeof cpu, device: Device) => {
      const y = m.forward(fromArray(x, [2, 1, 32, 32], 'float32', device), fromArray([3, 700], [2], 'float32', device));
      backward(ops.mean(ops.mul(y, y)));
      return { out: y.dataSync() as Float32Array, grads: m.namedParameters().map(([n, p]) => [n, p.grad!.dataSync() as Float32Array] as const) };
    };
    const c = run(cpu, 'cpu'), g = run(gpu, 'cuda');
    assert.ok(maxRelErr(g.out, c.out) < 1e-3, `forward differs by ${maxRelErr(g.out, c.out)}`);
    c.grads.forEach(([n, gc], i) => assert.ok(maxRelErr(g.grads[i][1], gc) < 1e-2, `${n}: gradient differs by ${maxRelErr(g.grads[i][1], gc)}`));
    cpu.dispose();
    gpu.dispose();
  });

  it('a DDIM sample (eta 0, 10 steps) from the same x_T', async () => {
    const config = tinyConfig();
    const schedule = scheduleFromConfig(config.model.params);
    const [cpu, gpu] = [buildUNet(config.model.params.unet_config, new Generator(0)), buildUNet(config.model.params.unet_config, new Generator(0))];
    gpu.to('cuda');
    const xT = randomArray(2 * 32 * 32, 9);
    const draw = async (m: typeof cpu, device: Device) => {
      const x = await sample((x, t) => m.forward(x, t), { sampler: 'ddim', steps: 10, schedule, shape: [2, 1, 32, 32], x_T: fromArray(xT, [2, 1, 32, 32], 'float32', device), device });
      assert.equal(x.device, device);
      return x.dataSync() as Float32Array;
    };
    const c = await draw(cpu, 'cpu'), g = await draw(gpu, 'cuda');
    assert.ok(maxRelErr(g, c) < 1e-3, `samples differ by ${maxRelErr(g, c)}`);
    cpu.dispose();
    gpu.dispose();
  });

  it('a quantized (TDQ W8A8, fake-quantized) forward', async () => {
    const config = tinyConfig();
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    const qm = await calibrate(unet, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic: true }), {
      schedule: scheduleFromConfig(config.model.params), steps: 4, nSamples: 1, seed: 0, method: 'minmax', sampleShape: [1, 32, 32], fitIters: 20,
    });
    qm.eval();
    const x = randomArray(2 * 32 * 32, 11);
    const fwd = (device: Device) => noGrad(() => qm.forward(fromArray(x, [2, 1, 32, 32], 'float32', device), fromArray([10, 900], [2], 'float32', device)).dataSync() as Float32Array);
    const c = fwd('cpu');
    qm.to('cuda');
    const g = fwd('cuda');
    // Fake quantization rounds: a value on a rounding edge may land one level apart.
    assert.ok(maxRelErr(g, c) < 2e-2, `quantized forward differs by ${maxRelErr(g, c)}`);
    qm.dispose();
  });

  it('dispose gives device memory back at once', () => {
    const mem = () => {
      const m = native().cudaMemory();
      assert.ok(m, 'cudaMemory() is null on a working device');
      return m;
    };
    const before = mem();
    const n = 64 << 20; // 256 MiB of float32
    const t = fromArray(new Float32Array(n), [n], 'float32', 'cuda');
    const held = mem();
    assert.ok(held.allocated >= before.allocated + 4 * n, `allocated ${before.allocated} -> ${held.allocated}`);
    t.dispose();
    native().syncBlocking();
    const after = mem();
    assert.equal(after.allocated, before.allocated);
  });

  it('out of device memory is a RangeError, and the device works afterwards', async () => {
    // (2^18, 1) + (1, 2^18): a 256 GiB result, more than any one GPU has.
    const a = fromArray(new Float32Array(1 << 18), [1 << 18, 1], 'float32', 'cuda');
    const b = fromArray(new Float32Array(1 << 18), [1, 1 << 18], 'float32', 'cuda');
    const big = ops.add(a, b);
    await assert.rejects(big.data(), (e: Error) => e instanceof RangeError && /out of memory/i.test(e.message));
    big.dispose();
    const ok = ops.add(fromArray([1, 2], [2], 'float32', 'cuda'), fromArray([3, 4], [2], 'float32', 'cuda'));
    assert.deepEqual(Array.from(await ok.data()), [4, 6]);
    a.dispose();
    b.dispose();
  });
});
