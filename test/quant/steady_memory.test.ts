// Sampling 1000 DDIM steps does not grow memory after the first steps: fp32,
// and a W4A8 TDQ model loaded from an 'int' weights file running in integer
// arithmetic (packed weights, zero-point corrections and the step table are
// built in the first steps and then only reused).
//
// Two measures, after each step (the sampler awaits the engine there, so no
// op is in flight and every step's intermediates have been freed):
// - the engine's live bytes (native().memory().liveBytes: every tensor's
//   storage): exact, so it must not change at all from step 20 on;
// - the process RSS: what the engine does not count (JS objects, V8 heap,
//   malloc arenas) moves by a few hundred KiB from step to step with garbage
//   collection. The median of the last samples may exceed the median of the
//   early ones by at most 8 MiB; the test also checks that this tolerance is
//   under a tenth of what leaking one step's intermediates every step would
//   add over the run, so a real per-step leak cannot hide in it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { sampleDdim } from '../../src/diffusion/samplers/ddim';
import { makeSchedule } from '../../src/diffusion/schedule';
import { openCheckpoint } from '../../src/models/load';
import { resolveQuantConfig } from '../../src/quant/config';
import { applyExec, loadQuantized, quantizeModel } from '../../src/quant/quantize_model';
import { SILU_MIN } from '../../src/quant/quantizer';
import { saveQuantizedCheckpoint } from '../../src/quant/weights_format';
import { native } from '../../src/tensor/native';
import { Generator } from '../../src/tensor/random';
import type { Tensor } from '../../src/tensor/tensor';
import { SCHEDULE, tinyUNet } from './helpers';

const STEPS = 1000;
const RSS_TOLERANCE = 8 * 2 ** 20;

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function steadyRun(eps: (x: Tensor, t: Tensor) => Tensor): Promise<{ live: number[]; rss: number[]; transient: number }> {
  const live: number[] = [], rss: number[] = [];
  let transient = 0;
  const x = await sampleDdim(eps, makeSchedule(SCHEDULE), {
    shape: [4, 1, 8, 8], steps: STEPS, ddimDiscretize: 'trailing', seed: 1,
    onProgress: (i) => {
      const m = native().memory();
      if (i === 20) native().resetPeakMemory();
      if (i === 21) transient = m.peakBytes - m.liveBytes;
      if (i >= 20) live.push(m.liveBytes);
      if (i >= 50 && i % 25 === 0) rss.push(process.memoryUsage().rss);
    },
  });
  x.dispose();
  return { live, rss, transient };
}

function check(name: string, r: { live: number[]; rss: number[]; transient: number }): void {
  const changed = r.live.findIndex((b) => b !== r.live[0]);
  assert.equal(changed, -1, `${name}: engine live bytes changed after step 20: ${r.live[0]} at step 20, ${r.live[changed]} at step ${20 + changed}, ${r.live[r.live.length - 1]} at step ${STEPS}`);
  const early = median(r.rss.slice(0, 7)), late = median(r.rss.slice(-7));
  assert.ok(late - early <= RSS_TOLERANCE, `${name}: RSS grew by ${((late - early) / 2 ** 20).toFixed(1)} MiB from steps 50-200 to ${STEPS - 150}-${STEPS}`);
  // The tolerance is far below a leak of one step's intermediates per step.
  assert.ok(r.transient * (STEPS - 200) > 10 * RSS_TOLERANCE, `${name}: a step allocates only ${r.transient} bytes: the RSS check could miss a per-step leak`);
}

describe('memory over 1000 sampling steps', () => {
  it('fp32 and integer execution (int weights file): engine bytes constant after step 20, RSS flat within 8 MiB', { timeout: 120_000 }, async () => {
    const fp = tinyUNet(2);
    fp.eval();
    try {
      check('fp32', await steadyRun((x, t) => fp.forward(x, t)));
    } finally {
      fp.dispose();
    }

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-steady-'));
    const file = path.join(dir, 'w4a8.safetensors');
    const src = quantizeModel(tinyUNet(1), resolveQuantConfig({ nBitW: 4, nBitA: 8, useDynamic: true }), { timesteps: 1000, gen: new Generator(0) });
    try {
      for (const [n, l] of src.layers) {
        const w = l.layer.weight.dataSync() as Float32Array, o = l.layer.weight.shape[0], k = w.length / o;
        l.weightQuant.setSteps(Array.from({ length: o }, (_, c) => Math.max(1e-4, ...w.subarray(c * k, (c + 1) * k).map(Math.abs)) / 7));
        // SiLU outputs: unsigned with the SiLU zero point (the integer path's correction maps)
        if (/in_layers\.2$|out_layers\.3$/.test(n)) l.actQuant.setRange({ signed: false, zeroPoint: SILU_MIN });
      }
      src.buildTable();
      await saveQuantizedCheckpoint(file, { config: null, model: src, weightsFormat: 'int' });
    } finally {
      src.dispose();
    }
    const ck = await openCheckpoint(file);
    const qm = loadQuantized(tinyUNet(3), ck.metadata, ck.model, ck.ema);
    ck.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
    try {
      assert.equal(applyExec(qm, 'int').exec, 'int');
      check('int', await steadyRun((x, t) => qm.forward(x, t)));
      assert.equal(qm.weightBytes().quantFloat, 0);
    } finally {
      qm.dispose();
    }
  });
});
