// Where PTQ loses accuracy, and what a per-timestep step size can win back.
// One calibration of a TDQ model, then the same quantized network evaluated
// with several step schedules per activation quantizer, all as step tables:
//   static    one step for all timesteps (the static calibration's pooled MSE step)
//   per-t     each calibration timestep's own MSE-optimal step (the TDQ targets)
//   smooth-λ  per-timestep steps chosen jointly with a smoothness penalty λ (smoothSteps)
//   fit       the TDQ MLPs as fitted to per-t (what PTQ-TDQ ships)
// Metric: teacher-forced eps-MSE against the FP model along FP DDIM
// trajectories, in total and by timestep range. With --per-layer, also each
// quantizer alone (all others bypassed), static against per-t: which layers
// carry the error, and which of them a timestep-dependent step helps.
//
//   node dist/bench/tdq_ptq_lab.js [--ckpt models/fmnist-small.safetensors] [--w 8 --a 4]
//     [--n-samples 8] [--steps 50] [--seeds 0] [--calib-samples 8] [--method mse|minmax|percentile] [--lambdas 1,4,16]
//     [--schedules static,per-t,fit] [--per-layer] [--out REPORT.md]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { sample } from '../src/diffusion/samplers/index';
import { calibrateWithReport } from '../src/quant/calibrate';
import { resolveQuantConfig } from '../src/quant/config';
import { type StepMethod, denseLogSteps, smoothSteps } from '../src/quant/step_search';
import { StepTable } from '../src/quant/table';
import { native } from '../src/tensor/native';
import { benchArgs } from './args';
import { type Reference, epsMsePerStep, freshUNet, loadFp, mean, mse, reference } from './tdq_common';

const USAGE =
  'node dist/bench/tdq_ptq_lab.js [--ckpt models/fmnist-small.safetensors] [--w 8 --a 4] [--n-samples 8] [--steps 50] [--seeds 0] [--calib-samples 8] ' +
  '[--method mse|minmax|percentile] [--lambdas 1,4,16] [--schedules static,per-t,fit] [--per-layer] [--out REPORT.md]';
const METHODS = ['auto', 'mse', 'minmax', 'percentile'] as const satisfies readonly StepMethod[];
const OPTIONS = {
  ckpt: { type: 'string', value: 'FILE', default: 'models/fmnist-small.safetensors', help: 'FP checkpoint' },
  w: { type: 'string', value: 'BITS', default: '8', help: 'weight bits' },
  a: { type: 'string', value: 'BITS', default: '4', help: 'activation bits' },
  'n-samples': { type: 'string', value: 'N', default: '8', help: 'samples per evaluation trajectory' },
  steps: { type: 'string', value: 'N', default: '50', help: 'DDIM steps' },
  seeds: { type: 'string', value: 'S,...', default: '0', help: 'seeds of the FP evaluation trajectories' },
  'calib-samples': { type: 'string', value: 'N', default: '8', help: 'calibration DDIM trajectories' },
  method: { type: 'string', value: METHODS.join('|'), default: 'mse', help: 'step search of the calibration' },
  lambdas: { type: 'string', value: 'L,...', default: '1,4,16', help: 'smoothness penalties of the smooth-λ schedules' },
  schedules: { type: 'string', value: 'NAME,...', help: 'evaluate only these schedules (default: all)' },
  'per-layer': { type: 'boolean', help: 'also each quantizer alone, static against per-t' },
  out: { type: 'string', value: 'FILE', help: 'also write the report here' },
} as const;

function parse(argv: string[]) {
  return benchArgs(USAGE, OPTIONS, (a) => ({
    ckpt: a.str('ckpt'), w: a.int('w', 1), act: a.int('a', 1), nSamples: a.int('n-samples', 1), steps: a.int('steps', 1),
    seeds: a.numList('seeds', { integer: true, min: 0 }), calibSamples: a.int('calib-samples', 1), lambdas: a.numList('lambdas', { min: 0 }),
    perLayer: a.flag('per-layer'), out: a.get('out') ?? '', only: a.get('schedules') === undefined ? [] : a.list('schedules'), method: a.choice('method', METHODS),
  }), argv);
}

const fmt = (x: number) => x.toPrecision(3);

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const t0 = Date.now();
  const m = await loadFp(a.ckpt);
  const fp = await freshUNet(m);
  const refs: Reference[] = [];
  for (const seed of a.seeds) refs.push(await reference(fp, m, seed, { steps: a.steps, nSamples: a.nSamples, epsSamples: a.nSamples }));
  fp.dispose();
  const cfg = resolveQuantConfig({ nBitW: a.w, nBitA: a.act, useDynamic: true });
  const { model: qm, report } = await calibrateWithReport(await freshUNet(m), cfg, {
    schedule: m.schedule, steps: a.steps, nSamples: a.calibSamples, seed: 1000, method: a.method, sampleShape: m.shape, keepStats: true,
  });
  qm.buildTable();
  const fitted = new Map(qm.actQuantizers().map((q) => [q.name, q.table!]));
  qm.useTable(true);
  const T = qm.timesteps;
  const byName = new Map(report.quantizers.map((q) => [q.name, q]));
  const dense = (t: number[], steps: number[]) => new StepTable(Float32Array.from(denseLogSteps({ t, step: steps }, T), Math.exp));
  // Step schedules: name -> quantizer -> table.
  const schedules = new Map<string, Map<string, StepTable>>();
  const perQuant = (f: (name: string) => StepTable) => new Map(qm.actQuantizers().map((q) => [q.name, f(q.name)]));
  schedules.set('static', perQuant((n) => new StepTable(new Float32Array(T).fill(byName.get(n)!.staticStep))));
  schedules.set('per-t', perQuant((n) => dense(byName.get(n)!.t, byName.get(n)!.steps)));
  for (const lambda of a.lambdas)
    schedules.set(`smooth-${lambda}`, perQuant((n) => {
      const q = byName.get(n)!;
      return dense(q.t, smoothSteps(report.stats!.get(n)!, a.act, q.range, { lambda }));
    }));
  // The static step carried along t by the activation's own scale: the
  // pooled step times (RMS about the zero point at t) / (pooled RMS). Keeps
  // the static step's clipping ratio while the distribution widens or narrows.
  const rms = (v: ArrayLike<number>, z: number) => {
    let acc = 0;
    for (let i = 0; i < v.length; ++i) acc += (v[i] - z) ** 2;
    return Math.sqrt(acc / Math.max(1, v.length));
  };
  schedules.set('rms-scaled', perQuant((n) => {
    const q = byName.get(n)!, list = report.stats!.get(n)!;
    const r = list.map((l) => rms(l.sample, q.range.zeroPoint));
    const pooled = Math.sqrt(mean(r.map((x) => x * x)));
    return dense(q.t, r.map((x) => q.staticStep * (x / pooled)));
  }));
  schedules.set('fit', fitted);

  const apply = (sched: Map<string, StepTable>) => {
    for (const q of qm.actQuantizers()) q.table = sched.get(q.name)!;
  };
  const evalAll = () => {
    const per = refs.map((r) => epsMsePerStep(qm, r, m));
    return per[0].map((_, k) => mean(per.map((p) => p[k])));
  };
  const ts = refs[0].ts;
  // How much an eps error at step k moves the DDIM update x_t -> x_prev (eta 0):
  // x_prev = sqrt(ab_prev) x0(eps) + sqrt(1 - ab_prev) eps, x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t).
  const ab = m.schedule.alphasCumprod;
  const coef = ts.map((t, k) => {
    const prev = k + 1 < ts.length ? ab[ts[k + 1]] : 1;
    return Math.sqrt(1 - prev) - (Math.sqrt(prev) * Math.sqrt(1 - ab[t])) / Math.sqrt(ab[t]);
  });
  // Timestep ranges for the breakdown (t descends along the trajectory).
  const bands = [[0, 200], [200, 400], [400, 600], [600, 800], [800, 1000]];
  const lines: string[] = [];
  const say = (s: string) => {
    console.log(s);
    lines.push(s);
  };
  say(`# PTQ lab: W${a.w}A${a.act}, ${path.basename(a.ckpt)}`);
  say('');
  say(`- command: \`node dist/bench/tdq_ptq_lab.js ${process.argv.slice(2).join(' ')}\``);
  say(`- date: ${new Date().toISOString().slice(0, 10)}, machine: ${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} cores, engine ${native().info().cpuLevel}, ${native().info().threads} threads`);
  say(`- calibration: ${a.calibSamples} DDIM trajectories of ${a.steps} steps (seed 1000), ${a.method} steps; evaluation: FP DDIM trajectories of seeds ${a.seeds.join(', ')}, ${a.nSamples} samples each`);
  say('- eps-MSE: teacher-forced, mean over steps and pixels of (eps_Q - eps_FP)^2; by band: mean over the steps whose t falls in it');
  say('');
  say('- update error: sum over steps of c_t^2 * eps-MSE_t, c_t the weight of eps in the DDIM update (the first-order error each step adds to x, before it propagates)');
  say('');
  say('- x0-MSE: the quantized model samples from the FP samples\' own noise (DDIM, clipped x0 as the CLI); mean squared difference of the final samples');
  say('');
  say(`| step schedule | eps-MSE | update error | x0-MSE | ${bands.map(([lo, hi]) => `t ${lo}-${hi}`).join(' | ')} |`);
  say(`|---|---|---|---|${bands.map(() => '---').join('|')}|`);
  const x0Mse = async () => {
    const v: number[] = [];
    for (const [si, seed] of a.seeds.entries()) {
      const out = await sample((x, t) => qm.forward(x, t), { sampler: 'ddim', steps: a.steps, schedule: m.schedule, shape: [a.nSamples, ...m.shape], seed, clipDenoised: true });
      v.push(mse(out.dataSync() as Float32Array, refs[si].x0));
      out.dispose();
    }
    return mean(v);
  };
  for (const [name, sched] of schedules) {
    if (a.only.length && !a.only.includes(name)) continue;
    apply(sched);
    const e = evalAll();
    const x0 = await x0Mse();
    const band = bands.map(([lo, hi]) => mean(e.filter((_, k) => ts[k] >= lo && ts[k] < hi)));
    const upd = e.reduce((acc, v, k) => acc + coef[k] ** 2 * v, 0);
    say(`| ${name} | ${fmt(mean(e))} | ${fmt(upd)} | ${fmt(x0)} | ${band.map(fmt).join(' | ')} |`);
  }
  if (a.perLayer) {
    say('');
    say('Each activation quantizer alone (every other one bypassed; weights quantized throughout):');
    say('');
    say('| quantizer | range | static | per-t | per-t / static | step max/min over t |');
    say('|---|---|---|---|---|---|');
    const qs = qm.actQuantizers();
    // Rows print as they are measured (model order); the file gets them sorted, largest static error first.
    const rows: { s: number; line: string }[] = [];
    for (const q of qs) {
      for (const o of qs) o.bypass = o !== q;
      const res: number[] = [];
      for (const sched of ['static', 'per-t']) {
        apply(schedules.get(sched)!);
        res.push(mean(evalAll()));
      }
      const c = byName.get(q.name)!;
      const spread = Math.max(...c.steps) / Math.min(...c.steps);
      const range = c.range.signed ? 'signed' : c.range.zeroPoint ? 'unsigned (SiLU)' : 'unsigned';
      const line = `| ${q.name.replace(/\.act_quant$/, '')} | ${range} | ${fmt(res[0])} | ${fmt(res[1])} | ${(res[1] / res[0]).toFixed(2)} | ${spread.toFixed(2)} |`;
      console.log(line);
      rows.push({ s: res[0], line });
    }
    for (const o of qs) o.bypass = false;
    rows.sort((x, y) => y.s - x.s);
    lines.push(...rows.map((r) => r.line));
  }
  say('');
  say(`(${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  qm.dispose();
  if (a.out) {
    fs.mkdirSync(path.dirname(path.resolve(a.out)), { recursive: true });
    fs.writeFileSync(a.out, lines.join('\n') + '\n');
    console.log(`wrote ${a.out}`);
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack ?? e.message : e);
  process.exit(1);
});
