// The latent-diffusion key helpers on the Lightning fixture (torch 1.13) and
// on hand-made maps: splitting by component, ignore_keys, LitEma's dotless
// names mapped back, and the DDPM schedule buffers checked against betas.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';

import { makeBetaSchedule } from '../../src/diffusion/schedule';
import { DDPM_SCHEDULE_BUFFERS, TorchCheckpointError, applyEma, compareSchedule, dropIgnoredKeys, expectedSchedule, loadTorchCheckpoint, splitLdm } from '../../src/io/torch_ckpt';

const FIX = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'torch');

describe('LDM key layout', () => {
  it('splitLdm sorts the Lightning fixture by component, prefixes removed', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'));
    try {
      const p = splitLdm(ck.tensors);
      assert.deepEqual([...p.unet.keys()], ['input_blocks.0.0.weight', 'input_blocks.0.0.bias', 'out.2.weight', 'loss_ignored.weight']);
      assert.deepEqual([...p.firstStage.keys()], ['encoder.conv_in.weight']);
      assert.deepEqual([...p.condStage.keys()], ['embedding.weight']);
      assert.deepEqual([...p.ema.keys()], ['diffusion_modelinput_blocks00weight', 'diffusion_modelinput_blocks00bias', 'diffusion_modelout2weight']);
      assert.deepEqual([...p.schedule.keys()], ['betas', 'alphas_cumprod', 'alphas_cumprod_prev']);
      assert.ok(Math.abs(p.emaDecay!.dataSync()[0] - 0.9999) < 1e-7);
      assert.equal(p.emaNumUpdates!.dataSync()[0], 1234);
      assert.equal(p.other.size, 0);
    } finally {
      ck.dispose();
    }
  });

  it('applyEma puts model_ema values on the model.diffusion_model keys and drops model_ema.*', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'));
    try {
      const r = applyEma(ck.tensors, ck.file);
      assert.deepEqual(r.replaced, ['model.diffusion_model.input_blocks.0.0.weight', 'model.diffusion_model.input_blocks.0.0.bias', 'model.diffusion_model.out.2.weight']);
      assert.deepEqual(r.missing, ['model.diffusion_model.loss_ignored.weight']);
      assert.deepEqual(r.unused, []);
      assert.ok(![...r.stateDict.keys()].some((k) => k.startsWith('model_ema.')));
      // the fixture's EMA is the weight + 100
      for (const k of r.replaced) {
        const raw = Array.from(ck.tensors.get(k)!.dataSync()), ema = Array.from(r.stateDict.get(k)!.dataSync());
        ema.forEach((v, i) => assert.ok(Math.abs(v - (raw[i] + 100)) < 1e-4, `${k}[${i}]`));
      }
      // order is kept: the schedule buffers first, as in the file
      assert.equal([...r.stateDict.keys()][0], 'betas');
    } finally {
      ck.dispose();
    }
  });

  it('applyEma: no EMA, an ambiguous mapping, and unused EMA buffers', () => {
    assert.throws(() => applyEma(new Map([['model.diffusion_model.a.weight', 1]]), 'x.ckpt'), (e: Error) => e instanceof TorchCheckpointError && /x\.ckpt.*no model_ema/.test(e.message));
    assert.throws(() => applyEma(new Map([['model.a.b1', 1], ['model.ab.1', 2], ['model_ema.ab1', 3]])), /'model\.a\.b1' and 'model\.ab\.1' both map to the EMA name 'model_ema\.ab1'/);
    const r = applyEma(new Map([['model.a.w', 1], ['model_ema.aw', 2], ['model_ema.zz', 3], ['model_ema.decay', 4]]));
    assert.deepEqual([...r.stateDict], [['model.a.w', 2]]);
    assert.deepEqual(r.unused, ['model_ema.zz']);
    assert.equal(r.decay, 4);
  });

  it('dropIgnoredKeys removes keys by prefix', () => {
    const r = dropIgnoredKeys(new Map([['first_stage_model.a', 1], ['model.b', 2], ['loss.c', 3]]), ['first_stage_model.', 'loss']);
    assert.deepEqual([...r.stateDict.keys()], ['model.b']);
    assert.deepEqual(r.dropped, ['first_stage_model.a', 'loss.c']);
  });

  it("the fixture's schedule buffers agree with the linear betas of its config, and not with others", async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'));
    try {
      const sched = new Map([...splitLdm(ck.tensors).schedule].map(([k, t]) => [k, t.dataSync() as Float32Array]));
      const betas = makeBetaSchedule('linear', 10, { linearStart: 0.0015, linearEnd: 0.0195 });
      assert.deepEqual(compareSchedule(sched, betas), []);
      const other = makeBetaSchedule('linear', 10, { linearStart: 0.00085, linearEnd: 0.012 });
      const bad = compareSchedule(sched, other);
      assert.deepEqual(bad.map((m) => [m.name, m.index]), [['betas', 0], ['alphas_cumprod', 0], ['alphas_cumprod_prev', 1]]);
      assert.deepEqual(compareSchedule(sched, makeBetaSchedule('linear', 12, { linearStart: 0.0015, linearEnd: 0.0195 })).map((m) => m.index), [-1, -1, -1]);
    } finally {
      ck.dispose();
    }
  });

  it('expectedSchedule follows register_schedule', () => {
    const s = expectedSchedule([0.1, 0.2, 0.3]);
    assert.deepEqual(Object.keys(s), [...DDPM_SCHEDULE_BUFFERS]);
    assert.ok(Math.abs(s.alphas_cumprod[2] - 0.9 * 0.8 * 0.7) < 1e-15);
    assert.equal(s.alphas_cumprod_prev[0], 1);
    assert.equal(s.posterior_variance[0], 0); // (1 - acp_prev[0]) = 0
    assert.equal(s.posterior_log_variance_clipped[0], Math.log(1e-20));
    assert.ok(Math.abs(s.posterior_mean_coef2[1] - ((1 - 0.9) * Math.sqrt(0.8)) / (1 - 0.72)) < 1e-15);
  });
});
