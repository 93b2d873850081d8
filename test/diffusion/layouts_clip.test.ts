import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import { GaussianData } from '../../src/diffusion/gaussian';
import { NoiseSchedule, makeBetaSchedule } from '../../src/diffusion/schedule';
import { type SamplerName, makeDdimTimesteps, nearestUniformCounts, sample, uniformLayout } from '../../src/diffusion/samplers';
import { Generator } from '../../src/tensor/random';
import { clipEpsilon } from '../../src/diffusion/samplers/common';

const root = path.resolve(__dirname, '..', '..', '..');
const ref = JSON.parse(fs.readFileSync(path.join(root, 'test', 'fixtures', 'ddim_layouts.json'), 'utf8')) as {
  T: number;
  linspace: Record<string, number[]>;
  trailing: Record<string, number[]>;
};

describe('DDIM / PLMS timestep layouts', () => {
  it("'linspace' and 'trailing' match diffusers' DDIMScheduler spacing (numpy reference)", () => {
    for (const method of ['linspace', 'trailing'] as const)
      for (const [n, want] of Object.entries(ref[method])) assert.deepEqual(makeDdimTimesteps(method, Number(n), ref.T), want, `${method} ${n}`);
  });

  it("'linspace' and 'trailing' give exactly n distinct steps in [0, T-1] for every 1 <= n <= T", () => {
    for (const T of [1000, 37]) {
      for (let n = 1; n <= T; ++n) {
        for (const method of ['linspace', 'trailing'] as const) {
          const ts = makeDdimTimesteps(method, n, T);
          assert.equal(ts.length, n, `${method} n=${n} T=${T}`);
          for (let i = 0; i < n; ++i) assert.ok(ts[i] >= 0 && ts[i] <= T - 1 && (i === 0 || ts[i] > ts[i - 1]), `${method} n=${n} T=${T}: ${ts}`);
        }
      }
    }
  });

  it("'uniform' stays LDM's where it works; where it cannot lay out n, the error names the nearest counts and the other layouts", () => {
    assert.deepEqual(makeDdimTimesteps('uniform', 50, 1000), Array.from({ length: 50 }, (_, i) => 20 * i + 1));
    for (const n of [3, 9, 27, 37, 111, 333, 501, 777, 1000]) {
      assert.throws(
        () => makeDdimTimesteps('uniform', n, 1000),
        (e: Error) => e instanceof RangeError && /nearest|near/.test(e.message) && /'linspace' or 'trailing'/.test(e.message) && /timestep 1000/.test(e.message),
        `n=${n}`,
      );
    }
    assert.deepEqual(nearestUniformCounts(3, 1000), [2, 4]);
    assert.deepEqual(nearestUniformCounts(501, 1000), [500]);
    for (const n of [...nearestUniformCounts(3, 1000), ...nearestUniformCounts(37, 1000), ...nearestUniformCounts(501, 1000)]) {
      assert.equal(makeDdimTimesteps('uniform', n, 1000).length, n);
      assert.deepEqual(uniformLayout(n, 1000), { count: n, fits: true });
    }
    assert.match(String((() => { try { makeDdimTimesteps('uniform', 3, 1000); } catch (e) { return (e as Error).message; } })()), /near 3: 2, 4/);
  });

  it('sample() runs exactly n steps of DDIM and PLMS for counts uniform cannot lay out', async () => {
    const schedule = new NoiseSchedule(makeBetaSchedule('ddpm_linear', 1000));
    const g = new GaussianData([0.1, -0.2], [0.3, 0.3]);
    for (const sampler of ['ddim', 'plms'] as const) {
      for (const ddimDiscretize of ['linspace', 'trailing'] as const) {
        let calls = 0;
        const out = await sample(g.epsModel(schedule), { shape: [4, 2], sampler, steps: 37, schedule, ddimDiscretize, onProgress: () => ++calls });
        assert.equal(calls, 37, `${sampler} ${ddimDiscretize}`);
        const v = (await out.data()) as Float32Array;
        assert.ok(v.every(Number.isFinite));
        out.dispose();
      }
    }
  });
});

describe('clip_denoised in PLMS and DPM-Solver++', () => {
  const schedule = new NoiseSchedule(makeBetaSchedule('ddpm_linear', 1000));
  const samplers: [SamplerName, number][] = [['ddim', 50], ['plms', 50], ['dpmpp', 20]];
  for (const [sampler, steps] of samplers) {
    it(`${sampler}: keeps samples in [-1, 1] for data outside and changes nothing for data inside (as DDIM)`, async () => {
      const outside = new GaussianData([3, -3], [0.1, 0.1]);
      const opts = { shape: [256, 2], sampler, steps, seed: 1, schedule };
      const free = (await (await sample(outside.epsModel(schedule), opts)).data()) as Float32Array;
      const clipped = (await (await sample(outside.epsModel(schedule), { ...opts, clipDenoised: true })).data()) as Float32Array;
      assert.ok(free.some((v) => Math.abs(v) > 2), 'unclipped samples follow the data outside [-1, 1]');
      // The last step lands at abar_0 = 1 - beta_0 (as LDM), not at x_0 itself, so a
      // sqrt(1 - abar_0) = 1e-2 share of eps remains beside the clamped x_0.
      const worst = clipped.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assert.ok(worst < 1.1, `clipped samples stay within [-1, 1] up to the last step's noise share, got ${worst}`);
      const inside = new GaussianData([0.2, -0.1], [0.05, 0.05]);
      const a = (await (await sample(inside.epsModel(schedule), opts)).data()) as Float32Array;
      const b = (await (await sample(inside.epsModel(schedule), { ...opts, clipDenoised: true })).data()) as Float32Array;
      let maxDiff = 0;
      a.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - b[i]))));
      assert.ok(maxDiff < 1e-3, `clipping changed in-range samples by ${maxDiff}`);
    });
  }

  it('clipEpsilon: the eps whose x_0 is the clamped x_0 (reference in float64)', async () => {
    const gen = new Generator(5);
    const x = gen.randn([64], 'cpu');
    const eps = gen.randn([64], 'cpu');
    const abar = 0.3;
    const out = (await clipEpsilon(x, eps, abar).data()) as Float32Array;
    const xv = (await x.data()) as Float32Array, ev = (await eps.data()) as Float32Array;
    for (let i = 0; i < 64; ++i) {
      const x0 = Math.min(1, Math.max(-1, (xv[i] - Math.sqrt(1 - abar) * ev[i]) / Math.sqrt(abar)));
      const want = (xv[i] - Math.sqrt(abar) * x0) / Math.sqrt(1 - abar);
      assert.ok(Math.abs(out[i] - want) < 1e-5, `${i}: ${out[i]} vs ${want}`);
    }
  });
});
