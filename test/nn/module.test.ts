import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { Identity, ModuleList, Sequential } from '../../src/nn/containers';
import * as init from '../../src/nn/init';
import { Module, StateDictError } from '../../src/nn/module';
import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { cast, zeros } from '../../src/tensor/ops/creation';
import { add, mul, sum } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray, sync } from '../../src/tensor/tensor';

/** y = x * weight + bias over the last dim: enough of a layer to test the plumbing. */
class Affine extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(n: number, gen: Generator) {
    super();
    this.weight = this.registerParameter('weight', init.uniform([n], -1, 1, gen));
    this.bias = this.registerParameter('bias', init.uniform([n], -1, 1, gen));
  }
  forward(x: Tensor): Tensor {
    return add(mul(x, this.weight), this.bias);
  }
}

class Block extends Module {
  readonly norm: Affine;
  readonly layers: ModuleList;
  constructor(n: number, gen: Generator) {
    super();
    this.norm = this.registerModule('norm', new Affine(n, gen));
    this.registerBuffer('running_mean', zeros([n]));
    this.registerBuffer('scratch', zeros([n]), { persistent: false });
    this.layers = this.registerModule('layers', new ModuleList([new Affine(n, gen), new Sequential(new Identity(), new Affine(n, gen))]));
  }
}

class Net extends Module {
  readonly inputBlocks: ModuleList;
  readonly out: Sequential;
  constructor(n: number, seed: number) {
    super();
    const gen = new Generator(seed);
    this.inputBlocks = this.registerModule('input_blocks', new ModuleList([new Block(n, gen), new Block(n, gen)]));
    this.out = this.registerModule('out', new Sequential(new Affine(n, gen), new Identity(), new Affine(n, gen)));
  }
  forward(x: Tensor): Tensor {
    return this.out.forward(x);
  }
}

const PARAM_KEYS = [
  'input_blocks.0.norm.weight', 'input_blocks.0.norm.bias',
  'input_blocks.0.layers.0.weight', 'input_blocks.0.layers.0.bias',
  'input_blocks.0.layers.1.1.weight', 'input_blocks.0.layers.1.1.bias',
  'input_blocks.1.norm.weight', 'input_blocks.1.norm.bias',
  'input_blocks.1.layers.0.weight', 'input_blocks.1.layers.0.bias',
  'input_blocks.1.layers.1.1.weight', 'input_blocks.1.layers.1.1.bias',
  'out.0.weight', 'out.0.bias', 'out.2.weight', 'out.2.bias',
];

async function values(ts: Iterable<Tensor>): Promise<number[][]> {
  const out: number[][] = [];
  for (const t of ts) out.push(Array.from(await t.data()));
  return out;
}

let dir: string;
before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'tdq-nn-'))));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('Module naming and structure', () => {
  it('parameter and state-dict keys follow PyTorch (nested Sequential / ModuleList)', () => {
    const net = new Net(4, 1);
    assert.deepEqual(net.namedParameters().map(([k]) => k), PARAM_KEYS);
    // state_dict: each module's parameters, then its persistent buffers, then its children
    const sd = [...net.stateDict().keys()];
    assert.deepEqual(sd.slice(0, 3), ['input_blocks.0.running_mean', 'input_blocks.0.norm.weight', 'input_blocks.0.norm.bias']);
    assert.equal(sd.length, PARAM_KEYS.length + 2);
    assert.deepEqual(new Set(sd), new Set([...PARAM_KEYS, 'input_blocks.0.running_mean', 'input_blocks.1.running_mean']));
    assert.deepEqual(net.namedBuffers().map(([k]) => k), ['input_blocks.0.running_mean', 'input_blocks.0.scratch', 'input_blocks.1.running_mean', 'input_blocks.1.scratch']);
    assert.equal(net.parameters().length, 16);
    assert.equal(net.numParameters(), 64);
    assert.ok(net.parameters().every((p) => p.requiresGrad));
    assert.ok(net.namedBuffers().every(([, b]) => !b.requiresGrad));
    assert.deepEqual(net.inputBlocks.get(1).namedParameters('input_blocks.1').map(([k]) => k), PARAM_KEYS.slice(6, 12));
    assert.deepEqual(net.namedModules().map(([k]) => k).slice(0, 5), ['', 'input_blocks', 'input_blocks.0', 'input_blocks.0.norm', 'input_blocks.0.layers']);
    net.dispose();
  });

  it('a shared parameter is listed once but saved under every name', () => {
    const gen = new Generator(0);
    const a = new Affine(2, gen);
    const seq = new Sequential(a, a);
    assert.deepEqual(seq.namedParameters().map(([k]) => k), ['0.weight', '0.bias']);
    assert.deepEqual([...seq.stateDict().keys()], ['0.weight', '0.bias', '1.weight', '1.bias']);
    seq.dispose();
  });

  it('registration rejects bad and repeated names', () => {
    class M extends Module {}
    const m = new M();
    m.registerParameter('w', zeros([1]));
    assert.throws(() => m.registerParameter('w', zeros([1])), /'w' is already registered/);
    assert.throws(() => m.registerBuffer('w', zeros([1])), /'w' is already registered/);
    assert.throws(() => m.registerModule('a.b', new Identity()), (e: Error) => e instanceof TypeError && /without '\.'/.test(e.message));
    assert.throws(() => m.registerParameter('i', zeros([1], 'int32')), (e: Error) => e instanceof TypeError && /floating point/.test(e.message));
    m.dispose();
  });

  it('train()/eval() reach every submodule; Sequential chains forward; get() checks its index', async () => {
    const net = new Net(3, 2);
    net.eval();
    assert.ok(net.namedModules().every(([, m]) => !m.training));
    net.train();
    assert.ok(net.namedModules().every(([, m]) => m.training));
    const x = fromArray([1, 2, 3], [3]);
    const y = net.forward(x);
    const [w0, b0, w2, b2] = await values([net.out.get(0) as Affine, net.out.get(-1) as Affine].flatMap((m) => [m.weight, m.bias]));
    const expect = [0, 1, 2].map((i) => Math.fround(Math.fround(Math.fround(Math.fround((i + 1) * w0[i]) + b0[i]) * w2[i]) + b2[i]));
    assert.deepEqual(Array.from(await y.data()), expect);
    assert.throws(() => net.out.get(3), RangeError);
    assert.equal(net.inputBlocks.length, 2);
    net.dispose();
  });

  it('parameters made inside tidy() survive it', () => {
    const net = tidy(() => new Net(2, 3));
    assert.ok(net.parameters().every((p) => !p.disposed));
    net.dispose();
  });
});

describe('state dicts', () => {
  it('round trip through safetensors into another model, keeping parameter identity', async () => {
    const a = new Net(5, 10), b = new Net(5, 20);
    const before = b.parameters();
    const file = path.join(dir, 'net.safetensors');
    await writeSafetensors(file, a.stateDict(), { format: 'pt' });
    assert.notDeepEqual(await values(b.parameters()), await values(a.parameters()));
    const { tensors } = await readSafetensors(file);
    const res = b.loadStateDict(tensors);
    assert.deepEqual(res, { missingKeys: [], unexpectedKeys: [] });
    for (const t of tensors.values()) t.dispose(); // loadStateDict copied the values
    assert.deepEqual(await values(b.stateDict().values()), await values(a.stateDict().values()));
    assert.ok(b.parameters().every((p, i) => p === before[i]));
    a.dispose();
    b.dispose();
  });

  it('float16 values load into float32 parameters', async () => {
    const a = new Net(3, 1), b = new Net(3, 2);
    const half = new Map([...a.stateDict()].map(([k, t]) => [k, cast(t, 'float16')]));
    b.loadStateDict(half);
    for (const [k, t] of b.stateDict()) {
      assert.equal(t.dtype, 'float32');
      const want = Array.from(await a.stateDict().get(k)!.data());
      Array.from(await t.data()).forEach((v, i) => assert.ok(Math.abs(v - want[i]) <= 1e-3 * Math.abs(want[i]) + 1e-7, `${k}[${i}]`));
    }
    for (const t of half.values()) t.dispose();
    a.dispose();
    b.dispose();
  });

  it('strict loading lists missing and unexpected keys; nothing changes on error', async () => {
    const a = new Net(2, 1), b = new Net(2, 2);
    const dict = new Map(a.stateDict());
    dict.delete('out.2.bias');
    dict.delete('input_blocks.1.running_mean');
    dict.set('out.3.weight', fromArray([1, 2], [2]));
    const beforeVals = await values(b.parameters());
    assert.throws(
      () => b.loadStateDict(dict),
      (e: Error) => {
        assert.ok(e instanceof StateDictError);
        assert.deepEqual(e.missingKeys, ['input_blocks.1.running_mean', 'out.2.bias']);
        assert.deepEqual(e.unexpectedKeys, ['out.3.weight']);
        assert.match(e.message, /missing keys: "input_blocks.1.running_mean", "out.2.bias"/);
        assert.match(e.message, /unexpected keys: "out.3.weight"/);
        return true;
      },
    );
    assert.deepEqual(await values(b.parameters()), beforeVals);
    // Non-strict: loads what matches and reports the rest.
    const res = b.loadStateDict(dict, { strict: false });
    assert.deepEqual(res, { missingKeys: ['input_blocks.1.running_mean', 'out.2.bias'], unexpectedKeys: ['out.3.weight'] });
    assert.deepEqual(Array.from(await b.out.get(0).namedParameters()[0][1].data()), Array.from(await a.out.get(0).namedParameters()[0][1].data()));
    a.dispose();
    b.dispose();
  });

  it('a shape mismatch names the key and both shapes, strict or not', () => {
    const a = new Net(2, 1);
    const dict = new Map(a.stateDict());
    dict.set('out.0.weight', fromArray([1, 2, 3], [3]));
    for (const strict of [true, false])
      assert.throws(
        () => a.loadStateDict(dict, { strict }),
        (e: Error) => e instanceof StateDictError && /size mismatch for out\.0\.weight: expected shape \[2\], got \[3\]/.test(e.message),
      );
    dict.set('out.0.weight', fromArray([1, 2], [2], 'int32'));
    assert.throws(() => a.loadStateDict(dict), (e: Error) => e instanceof TypeError && /out\.0\.weight: expected dtype float32, got int32/.test(e.message));
    a.dispose();
  });
});

describe('memory', () => {
  it('dispose() frees every parameter, gradient and buffer', async () => {
    await sync();
    const base = native().memory().liveBytes;
    const net = new Net(1000, 4);
    const x = fromArray(new Float32Array(1000).fill(1), [1000]);
    tidy(() => backward(sum(net.forward(x))));
    for (const p of net.parameters().slice(-4)) assert.ok(p.grad, 'out.* got gradients');
    await sync();
    const x0 = x.nbytes;
    const held = native().memory().liveBytes - base - x0;
    // 16 parameters + 4 buffers + 4 gradients of 1000 floats
    assert.ok(held >= (16 + 4 + 4) * 4000, `only ${held} bytes held`);
    net.dispose();
    x.dispose();
    await sync();
    assert.equal(native().memory().liveBytes, base);
    assert.ok(net.parameters().every((p) => p.disposed && p.grad === null));
  });

  it('zeroGrad() drops the gradients', () => {
    const net = new Net(2, 1);
    tidy(() => backward(sum(net.forward(fromArray([1, 1], [2])))));
    assert.ok(net.parameters().some((p) => p.grad));
    net.zeroGrad();
    assert.ok(net.parameters().every((p) => p.grad === null));
    net.dispose();
  });
});

describe('init', () => {
  it('kaimingUniform with a = sqrt(5) is U(-1/sqrt(fanIn), 1/sqrt(fanIn)), deterministic per seed', async () => {
    const w = init.kaimingUniform([64, 50], 50, Math.sqrt(5), new Generator(7));
    const v = Array.from(await w.data());
    const b = 1 / Math.sqrt(50);
    assert.ok(v.every((x) => x >= -b && x <= b));
    assert.ok(Math.max(...v.map(Math.abs)) > 0.99 * b, 'reaches the bound');
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    const variance = v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length;
    assert.ok(Math.abs(mean) < 0.05 * b, `mean ${mean}`);
    assert.ok(Math.abs(variance / (b * b / 3) - 1) < 0.05, `variance ${variance} vs ${(b * b) / 3}`);
    assert.deepEqual(Array.from(await init.kaimingUniform([64, 50], 50, Math.sqrt(5), new Generator(7)).data()), v);
    // relu gain: b = sqrt(2) * sqrt(3 / fanIn)
    const r = Array.from(await init.kaimingUniform([1000], 10, 0, new Generator(1)).data());
    const br = Math.sqrt(2) * Math.sqrt(3 / 10);
    assert.ok(r.every((x) => Math.abs(x) <= br) && Math.max(...r.map(Math.abs)) > 0.99 * br);
  });

  it('nn.Linear / nn.Conv2d defaults: weight then bias from one generator', async () => {
    const gen = new Generator(3);
    const lin = init.linearInit(20, 30, { gen });
    assert.deepEqual([...lin.weight.shape], [30, 20]);
    assert.deepEqual([...lin.bias!.shape], [30]);
    assert.equal(gen.offset, 630);
    const bl = 1 / Math.sqrt(20);
    for (const t of [lin.weight, lin.bias!]) assert.ok(Array.from(await t.data()).every((x) => Math.abs(x) <= bl));
    // the same draws as asking the generator directly, weight first
    const g2 = new Generator(3);
    const u = Array.from(await g2.rand([600]).data());
    const w = Array.from(await lin.weight.data());
    w.forEach((x, i) => assert.ok(Math.abs(x - (-bl + 2 * bl * u[i])) < 1e-6));

    const conv = init.conv2dInit(3, 8, 3, { gen: new Generator(1), bias: false });
    assert.deepEqual([...conv.weight.shape], [8, 3, 3, 3]);
    assert.equal(conv.bias, null);
    const bc = 1 / Math.sqrt(27);
    assert.ok(Array.from(await conv.weight.data()).every((x) => Math.abs(x) <= bc));
    assert.deepEqual(init.fanInAndFanOut([8, 3, 3, 3]), { fanIn: 27, fanOut: 72 });
    assert.throws(() => init.linearInit(0, 3), RangeError);
    assert.throws(() => init.uniform([2], 1, 0), RangeError);
  });
});
