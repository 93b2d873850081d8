import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { GaussianData } from '../../src/diffusion/gaussian';
import { NoiseSchedule, makeBetaSchedule } from '../../src/diffusion/schedule';
import { sample } from '../../src/diffusion/samplers';

describe('DDIM clip_denoised', () => {
  it('keeps samples in [-1, 1] for data that lives outside, and changes nothing for data inside', async () => {
    const schedule = new NoiseSchedule(makeBetaSchedule('ddpm_linear', 1000));
    const outside = new GaussianData([3, -3], [0.1, 0.1]);
    const opts = { shape: [256, 2], sampler: 'ddim' as const, steps: 50, seed: 1, schedule };
    const free = (await (await sample(outside.epsModel(schedule), opts)).data()) as Float32Array;
    const clipped = (await (await sample(outside.epsModel(schedule), { ...opts, clipDenoised: true })).data()) as Float32Array;
    assert.ok(free.some((v) => Math.abs(v) > 2), 'unclipped samples follow the data outside [-1, 1]');
    // The last DDIM step lands at abar_0 = 1 - beta_0 (as LDM), not at x_0 itself, so a
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
});
