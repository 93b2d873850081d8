// The LDM moves with .to() as pixel models do: every tensor the model holds
// (first stage, cond stage, UNet, scale_factor) is a parameter or buffer that
// Module.to() reaches, so none stays behind on the CPU; a .to() round trip keeps
// the tensors' identity and the samples bit for bit. On a GPU (skipped here
// with the reason) the pipeline samples on 'cuda' close to the CPU's images.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import type { LatentDiffusion } from '../../src/models/latent';
import { loadLatentPipeline } from '../../src/pipeline';
import { Tensor } from '../../src/tensor/tensor';
import { cudaSkip } from '../helpers/gpu';

const DIR = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'latent');
const COND = { ckpt: path.join(DIR, 'tiny_ldm_cond.ckpt'), config: path.join(DIR, 'tiny_ldm_cond.yaml') };
const OPTS = { n: 2, batchSize: 2, seed: 3, steps: 4, classes: [1, 2], scale: 2, uncondClass: 3 };

/** Every Tensor reachable from `root` through fields, arrays and maps, with a path to it. */
function reachableTensors(root: object): Map<Tensor, string> {
  const found = new Map<Tensor, string>();
  const seen = new Set<object>();
  const walk = (v: unknown, at: string): void => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    if (v instanceof Tensor) {
      if (!found.has(v)) found.set(v, at);
      if (v.grad) walk(v.grad, `${at}.grad`);
      return;
    }
    if (ArrayBuffer.isView(v)) return;
    if (v instanceof Map) {
      for (const [k, x] of v) walk(x, `${at}[${String(k)}]`);
      return;
    }
    for (const [k, x] of Object.entries(v)) walk(x, `${at}.${k}`);
  };
  walk(root, 'ldm');
  return found;
}

function moved(ldm: LatentDiffusion): Set<Tensor> {
  return new Set([...ldm.parameters(), ...ldm.namedBuffers().map(([, t]) => t)]);
}

describe('LatentDiffusion on a device', () => {
  it('every tensor the LDM holds is one Module.to() moves (first stage, cond stage, UNet)', async () => {
    const pipe = await loadLatentPipeline(COND.ckpt, { config: COND.config });
    const ldm = pipe.model;
    const all = moved(ldm);
    const names = new Set(ldm.namedParameters().map(([n]) => n.split('.')[0]));
    for (const part of ['model', 'first_stage_model', 'cond_stage_model']) assert.ok(names.has(part), `no parameters under ${part}`);
    const reachable = reachableTensors(ldm);
    assert.ok([...all].every((t) => reachable.has(t)), 'the walk reaches every parameter and buffer');
    const left = [...reachable].filter(([t]) => !all.has(t) && !t.disposed).map(([, at]) => at);
    assert.deepEqual(left, [], `tensors .to() would leave behind: ${left.join(', ')}`);
    pipe.dispose();
  });

  it(".to('cpu') round trip keeps the tensors and the samples identical", async () => {
    const pipe = await loadLatentPipeline(COND.ckpt, { config: COND.config, device: 'cpu' });
    assert.equal(pipe.device, 'cpu');
    const before = await pipe.generate(OPTS);
    const tensors = [...moved(pipe.model)];
    const values = tensors.map((t) => Array.from(t.dataSync()));
    assert.equal(pipe.model.to('cpu'), pipe.model);
    assert.deepEqual([...moved(pipe.model)], tensors, 'the same tensor objects');
    tensors.forEach((t, i) => assert.deepEqual(Array.from(t.dataSync()), values[i]));
    const after = await pipe.generate(OPTS);
    assert.deepEqual(Array.from(after.data), Array.from(before.data));
    pipe.dispose();
  });

  it('samples on cuda close to the CPU (GPU only)', { skip: cudaSkip() }, async () => {
    const cpu = await loadLatentPipeline(COND.ckpt, { config: COND.config, device: 'cpu' });
    const want = await cpu.generate(OPTS);
    cpu.dispose();
    const gpu = await loadLatentPipeline(COND.ckpt, { config: COND.config, device: 'cuda' });
    assert.ok([...moved(gpu.model)].every((t) => t.device === 'cuda'), 'every parameter and buffer on cuda');
    const got = await gpu.generate(OPTS);
    let num = 0, den = 1e-6;
    for (let i = 0; i < want.data.length; ++i) {
      num = Math.max(num, Math.abs(got.data[i] - want.data[i]));
      den = Math.max(den, Math.abs(want.data[i]));
    }
    assert.ok(num / den < 1e-3, `cuda vs cpu: relative error ${(num / den).toExponential(2)}`);
    // Back to the CPU: the same tensors, sampling there again.
    gpu.model.to('cpu');
    assert.ok([...moved(gpu.model)].every((t) => t.device === 'cpu'));
    gpu.dispose();
  });
});
