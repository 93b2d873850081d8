import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { Adam, AdamW, optimizerStateFromTensors, optimizerStateToTensors } from '../../src/optim/adam';
import { clipGradNorm, clipGradNormAsync, gradNorm } from '../../src/optim/clip';
import { ConstantSchedule, LambdaLinearScheduler, applyLrSchedule } from '../../src/optim/lr_schedule';
import { tidy } from '../../src/tensor/scope';
import { type Tensor, fromArray, runOp } from '../../src/tensor/tensor';
import { assertClose, randomData } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();




interface Hyper {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** Runs the engine optimizer for grads.length steps on one flat parameter. */
function engineSteps(decoupled: boolean, p0: Float32Array, grads: Float32Array[], h: Hyper, lrs?: number[]) {
  const n = p0.length;
  const p = fromArray(p0, [n]);
  const opt = new (decoupled ? AdamW : Adam)([['w', p]], h);
  grads.forEach((g, k) => {
    if (lrs) opt.paramGroups[0].lr = lrs[k];
    p.grad = fromArray(g, [n]);
    opt.step();
    opt.zeroGrad();
  });
  const st = opt.state().params.get('w')!;
  const out = { p: p.dataSync() as Float32Array, m: st.expAvg.dataSync() as Float32Array, v: st.expAvgSq.dataSync() as Float32Array, step: st.step };
  opt.dispose();
  p.dispose();
  return out;
}

function stack(gs: Float32Array[]): { shape: number[]; data: Float32Array } {
  const n = gs[0].length, out = new Float32Array(gs.length * n);
  gs.forEach((g, k) => out.set(g, k * n));
  return { shape: [gs.length, n], data: out };
}

// float32 engine vs float64 PyTorch. The update (p - p0) is compared on its
// own, since the parameter's magnitude would hide an error in it.
const RTOL_STATE = 1e-6;
const RTOL_UPDATE = 5e-5;

describe('Adam / AdamW against torch.optim', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const N = 1037; // odd: exercises the SIMD tails
  const STEPS = 6;
  const p0 = randomData([N], 11);
  const grads = Array.from({ length: STEPS }, (_, k) => randomData([N], 100 + k, 0.1 * (k + 1)));

  for (const decoupled of [false, true])
    for (const weightDecay of [0, 0.05]) {
      const name = `${decoupled ? 'AdamW' : 'Adam'} weight decay ${weightDecay}`;
      it(`${name}: ${STEPS} steps match at every CPU level`, async () => {
        const h: Hyper = { lr: 0.01, betas: [0.9, 0.99], eps: 1e-8, weightDecay };
        const ref = await oracle.call('adam_steps', { param: { shape: [N], data: p0 }, grads: stack(grads) }, { lr: h.lr, betas: h.betas, eps: h.eps, weight_decay: weightDecay, decoupled });
        const [rp, rm, rv] = ref.outputs.map((o) => o.data as Float32Array);
        let first: ReturnType<typeof engineSteps> | undefined;
        for (const level of cpuLevels()) {
          const got = atLevel(level, () => engineSteps(decoupled, p0, grads, h));
          assert.equal(got.step, STEPS);
          assertClose(got.p, rp, RTOL_STATE, `${level} param`);
          assertClose(got.p.map((v, i) => v - p0[i]), rp.map((v, i) => v - p0[i]), RTOL_UPDATE, `${level} update`);
          assertClose(got.m, rm, RTOL_STATE, `${level} exp_avg`);
          assertClose(got.v, rv, RTOL_STATE, `${level} exp_avg_sq`);
          // The SIMD kernels do the scalar kernel's float operations in the same order.
          if (first) assert.deepEqual(got.p, first.p, `${level} param differs from scalar`);
          else first = got;
        }
      });
    }

  it('a learning rate changed between steps (schedule) is used', async () => {
    const h: Hyper = { lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 };
    const sched = new LambdaLinearScheduler({ warmUpSteps: [3], fMin: [0.5], fMax: [1], fStart: [0.1], cycleLengths: [10] });
    const lrs = grads.map((_, k) => h.lr * sched.factor(k));
    const ref = await oracle.call('adam_steps', { param: { shape: [N], data: p0 }, grads: stack(grads) }, { lr: h.lr, lrs, betas: h.betas, eps: h.eps, weight_decay: h.weightDecay, decoupled: true });
    const got = engineSteps(true, p0, grads, h, lrs);
    assertClose(got.p.map((v, i) => v - p0[i]), (ref.outputs[0].data as Float32Array).map((v, i) => v - p0[i]), RTOL_UPDATE, 'update');
  });

  it('clipGradNorm matches torch.nn.utils.clip_grad_norm_, clipping or not', async () => {
    const shapes = [[7], [33, 5], [2, 3, 4, 5], [1]];
    const gs = shapes.map((s, k) => randomData(s, 200 + k));
    for (const maxNorm of [0.5, 1e3]) {
      const ref = await oracle.call('clip_grad_norm', Object.fromEntries(gs.map((g, k) => [`g${k}`, { shape: shapes[k], data: g }])), { max_norm: maxNorm });
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const params = shapes.map((s) => fromArray(new Float32Array(s.reduce((a, d) => a * d, 1)), s));
          params.forEach((p, k) => (p.grad = fromArray(gs[k], shapes[k])));
          const noGrad = fromArray([1, 2], [2]); // skipped: no gradient
          const norm = await clipGradNormAsync([...params, noGrad], maxNorm);
          assertClose([norm], ref.outputs[0].data as Float32Array, 1e-6, `${level} norm (max ${maxNorm})`);
          for (let k = 0; k < params.length; ++k)
            assertClose((await params[k].grad!.data()) as Float32Array, ref.outputs[k + 1].data as Float32Array, 1e-6, `${level} grad ${k} (max ${maxNorm})`);
          for (const p of params) p.grad!.dispose(), p.dispose();
          noGrad.dispose();
        });
      }
    }
  });
});

describe('optimizer mechanics', () => {
  it('groups get their own lr; parameters without a gradient are skipped', async () => {
    const a = fromArray([1, 2, 3], [3]), b = fromArray([1, 2, 3], [3]), c = fromArray([5], [1]);
    const opt = new Adam([{ params: [['a', a], ['c', c]], lr: 0.1 }, { params: [['b', b]], lr: 0.01, name: 'steps' }]);
    assert.deepEqual(opt.paramGroups.map((g) => [g.name, g.lr]), [['0', 0.1], ['steps', 0.01]]);
    a.grad = fromArray([1, -1, 1], [3]);
    b.grad = fromArray([1, -1, 1], [3]);
    opt.step();
    // The first Adam step moves each element by lr * sign(g) (up to eps).
    assertClose((await a.data()) as Float32Array, [0.9, 2.1, 2.9], 1e-6, 'group 0');
    assertClose((await b.data()) as Float32Array, [0.99, 2.01, 2.99], 1e-6, 'group 1');
    assert.deepEqual(Array.from((await c.data()) as Float32Array), [5]);
    assert.deepEqual([...opt.state().params.keys()], ['a', 'b']);
    opt.zeroGrad();
    assert.equal(a.grad, null);
    opt.dispose();
  });

  it('state created inside tidy() survives it', async () => {
    const p = fromArray([1, 2], [2]);
    const opt = new Adam([p], { lr: 0.1 });
    tidy(() => {
      p.grad = fromArray([1, 1], [2]);
      opt.step();
    });
    const st = opt.state().params.get('0')!;
    assert.equal(st.expAvg.disposed, false);
    assertClose((await st.expAvg.data()) as Float32Array, [0.1, 0.1], 1e-6, 'exp_avg');
    opt.dispose();
  });

  it('state saved to safetensors and loaded continues exactly like an uninterrupted run', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tdq-adam-'));
    try {
      const n = 50;
      const init = randomData([n], 3);
      const grads = Array.from({ length: 5 }, (_, k) => randomData([n], 40 + k));
      const run = (opt: AdamW, p: Tensor, from: number, to: number) => {
        for (let k = from; k < to; ++k) {
          p.grad = fromArray(grads[k], [n]);
          opt.step();
          opt.zeroGrad();
        }
      };
      const pa = fromArray(init, [n]);
      const oa = new AdamW([['layer.weight', pa]], { lr: 0.02 });
      run(oa, pa, 0, 5);

      const pb = fromArray(init, [n]);
      const ob = new AdamW([['layer.weight', pb]], { lr: 0.02 });
      run(ob, pb, 0, 3);
      const file = path.join(dir, 'opt.safetensors');
      const flat = optimizerStateToTensors(ob.state());
      await writeSafetensors(file, flat.tensors, flat.metadata);
      ob.paramGroups[0].lr = 1; // overwritten by the load
      ob.dispose();

      const pc = fromArray(pb.dataSync(), [n]);
      pb.dispose();
      const oc = new AdamW([['layer.weight', pc]], { lr: 0.5 });
      const loaded = await readSafetensors(file);
      oc.loadState(optimizerStateFromTensors(loaded.tensors, loaded.metadata));
      for (const t of loaded.tensors.values()) t.dispose(); // loadState copied them
      assert.equal(oc.paramGroups[0].lr, 0.02);
      run(oc, pc, 3, 5);
      assert.deepEqual(pc.dataSync(), pa.dataSync());
      assert.equal(oc.state().params.get('layer.weight')!.step, 5);
      oa.dispose();
      oc.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('loadState rejects unknown names and wrong shapes, changing nothing', () => {
    const p = fromArray([1, 2], [2]);
    const opt = new Adam([['w', p]]);
    const bad = { groups: [], params: new Map([['v', { step: 1, expAvg: fromArray([0, 0], [2]), expAvgSq: fromArray([0, 0], [2]) }]]) };
    assert.throws(() => opt.loadState(bad), /unknown parameter 'v'/);
    const bad2 = { groups: [], params: new Map([['w', { step: 1, expAvg: fromArray([0], [1]), expAvgSq: fromArray([0, 0], [2]) }]]) };
    assert.throws(() => opt.loadState(bad2), /'w': expAvg has shape \[1\], the parameter \[2\]/);
  });

  it('bad hyperparameters and parameters are rejected with the name of the problem', () => {
    const p = fromArray([1], [1]);
    assert.throws(() => new Adam([]), (e: Error) => e instanceof RangeError && /empty parameter list/.test(e.message));
    assert.throws(() => new Adam([p], { lr: -1 }), (e: Error) => e instanceof RangeError && /lr/.test(e.message));
    assert.throws(() => new Adam([p], { betas: [0.9, 1] }), (e: Error) => e instanceof RangeError && /betas\[1\]/.test(e.message));
    assert.throws(() => new Adam([{ params: [p] }, { params: [p] }]), /appears twice/);
    assert.throws(() => new Adam([fromArray([1], [1], 'int32')]), (e: Error) => e instanceof TypeError && /float32/.test(e.message));
  });

  it('the native ops check their arguments', () => {
    const p = fromArray([1, 2], [2]), m = fromArray([0, 0], [2]), v = fromArray([0, 0], [2]);
    const attrs = { lr: 0.1, step: 1 };
    assert.throws(() => runOp('adam_step', [p, fromArray([1, 2], [2], 'int32'), m, v], attrs), (e: Error) => e instanceof TypeError && /'grad' must be float32/.test(e.message));
    assert.throws(() => runOp('adam_step', [p, fromArray([1, 2], [2]), fromArray([0], [1]), v], attrs), (e: Error) => e instanceof RangeError && /'exp_avg' must have shape \[2\]/.test(e.message));
    assert.throws(() => runOp('adam_step', [p, fromArray([1, 2], [2]), m, v], { lr: 0.1, step: 0 }), (e: Error) => e instanceof RangeError && /'step'/.test(e.message));
    assert.throws(() => runOp('adam_step', [p, fromArray([1, 2], [2]), m, v], { lr: 0.1, step: 1, beta1: 1 }), (e: Error) => e instanceof RangeError && /'beta1'/.test(e.message));
    assert.throws(() => runOp('adam_step', [p, p, m, v], attrs), (e: Error) => e instanceof RangeError && /'param' and 'grad' share storage/.test(e.message));
    assert.throws(() => runOp('copy_', [p, fromArray([1, 2, 3], [3])]), (e: Error) => e instanceof RangeError && /'src' must have shape \[2\]/.test(e.message));
    assert.throws(() => runOp('copy_', [p, fromArray([1, 2], [2], 'int32')]), (e: Error) => e instanceof TypeError && /'src' must be float32/.test(e.message));
    assert.throws(() => runOp('clip_scale_', [fromArray([1, 2], [2]), p], { max_norm: 1 }), (e: Error) => e instanceof RangeError && /'norm'/.test(e.message));
    assert.throws(() => runOp('clip_scale_', [fromArray([1], []), p], { max_norm: 0 }), (e: Error) => e instanceof RangeError && /'max_norm'/.test(e.message));
    assert.throws(() => clipGradNorm([p], Number.NaN), RangeError);
  });

  it('gradNorm over more tensors than one native call takes', async () => {
    const params: Tensor[] = [];
    let ref = 0;
    for (let i = 0; i < 5000; ++i) {
      const p = fromArray([0], [1]);
      p.grad = fromArray([(i % 7) - 3], [1]);
      ref += ((i % 7) - 3) ** 2;
      params.push(p);
    }
    const norm = gradNorm(params);
    assertClose([await norm.item()], [Math.sqrt(ref)], 1e-7, 'norm');
    norm.dispose();
    for (const p of params) p.grad!.dispose(), p.dispose();
  });
});

describe('learning-rate schedules', () => {
  it('LambdaLinearScheduler follows the latent-diffusion formula over two cycles', () => {
    const s = new LambdaLinearScheduler({ warmUpSteps: [2, 0], fMin: [0.2, 0.1], fMax: [1, 1], fStart: [0.1, 0.5], cycleLengths: [4, 3] });
    // Worked by hand: warm-up 0.1 -> 1 over 2 steps, then 1 -> 0.2 linearly to
    // the end of cycle 0 (step 4 inclusive); cycle 1 has no warm-up.
    const expected = [0.1, 0.55, 0.6, 0.4, 0.2, 0.7, 0.4, 0.1];
    expected.forEach((f, n) => assert.ok(Math.abs(s.factor(n) - f) < 1e-12, `step ${n}: ${s.factor(n)} != ${f}`));
    assert.throws(() => s.factor(8), (e: Error) => e instanceof RangeError && /past the last cycle/.test(e.message));
    assert.throws(() => s.factor(-1), RangeError);
  });

  it('the LDM default warms up from 1e-6 to 1 over 10000 steps', () => {
    const s = LambdaLinearScheduler.ldmDefault();
    assert.equal(s.factor(0), 1e-6);
    assert.ok(Math.abs(s.factor(5000) - (1e-6 + (1 - 1e-6) / 2)) < 1e-12);
    assert.equal(s.factor(10000), 1);
    assert.equal(s.factor(10_000_000), 1);
  });

  it('applyLrSchedule scales each group from its initial lr; bad configs are refused', () => {
    const p = fromArray([1], [1]), q = fromArray([1], [1]);
    const opt = new Adam([{ params: [p], lr: 1e-3 }, { params: [q], lr: 1e-2 }]);
    applyLrSchedule(opt, LambdaLinearScheduler.ldmDefault(10), 5);
    assert.ok(Math.abs(opt.paramGroups[0].lr - 1e-3 * (1e-6 + (1 - 1e-6) * 0.5)) < 1e-15);
    assert.ok(Math.abs(opt.paramGroups[1].lr - 1e-2 * (1e-6 + (1 - 1e-6) * 0.5)) < 1e-15);
    applyLrSchedule(opt, new ConstantSchedule(), 123);
    assert.deepEqual(opt.paramGroups.map((g) => g.lr), [1e-3, 1e-2]);
    assert.throws(() => new LambdaLinearScheduler({ warmUpSteps: [1], fMin: [1, 2], fMax: [1], fStart: [0], cycleLengths: [5] }), RangeError);
    assert.throws(() => new LambdaLinearScheduler({ warmUpSteps: [1], fMin: [1], fMax: [1], fStart: [0], cycleLengths: [0] }), /cycleLengths\[0\]/);
  });
});
