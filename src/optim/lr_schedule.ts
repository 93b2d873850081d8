// Learning-rate schedules as multipliers of each group's initial lr, the way
// latent-diffusion drives torch's LambdaLR: the lr of optimizer step n
// (counted from 0) is initialLr * schedule(n).
import type { ParamGroup } from './adam';

export interface LrSchedule {
  /** The multiplier for step n (n = 0 for the first optimizer step). */
  factor(n: number): number;
}

/** The same multiplier every step (1 by default: the optimizer's own lr). */
export class ConstantSchedule implements LrSchedule {
  constructor(readonly value = 1) {
    if (!Number.isFinite(value) || value < 0) throw new RangeError(`ConstantSchedule: value must be a finite number >= 0, got ${value}`);
  }

  factor(n: number): number {
    checkStep('ConstantSchedule', n);
    return this.value;
  }
}

export interface LambdaLinearOptions {
  warmUpSteps: number[];
  fMin: number[];
  fMax: number[];
  fStart: number[];
  cycleLengths: number[];
}

function checkStep(who: string, n: number): void {
  if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`${who}: step must be an integer >= 0, got ${n}`);
}

/**
 * LambdaLinearScheduler of CompVis latent-diffusion (ldm/lr_scheduler.py), for
 * configs' scheduler_config. Steps are split into cycles of cycleLengths;
 * within cycle c, at local step t:
 *   t < warmUpSteps[c]:  fStart[c] + (fMax[c] - fStart[c]) * t / warmUpSteps[c]
 *   otherwise:           fMin[c] + (fMax[c] - fMin[c]) * (cycleLengths[c] - t) / cycleLengths[c]
 * A step belongs to the first cycle whose cumulative end is >= it (so the
 * step at a boundary still counts to the earlier cycle, as upstream). Steps
 * after the last cycle are an error, as they are upstream.
 */
export class LambdaLinearScheduler implements LrSchedule {
  private readonly cumCycles: number[];

  constructor(readonly opts: LambdaLinearOptions) {
    const n = opts.warmUpSteps?.length;
    const lists = ['warmUpSteps', 'fMin', 'fMax', 'fStart', 'cycleLengths'] as const;
    for (const k of lists) {
      if (!Array.isArray(opts[k])) throw new TypeError(`LambdaLinearScheduler: ${k} must be an array of numbers`);
      if (opts[k].length !== n)
        throw new RangeError(`LambdaLinearScheduler: warmUpSteps, fMin, fMax, fStart and cycleLengths must have one entry per cycle (got lengths ${lists.map((l) => opts[l].length).join(', ')})`);
      opts[k].forEach((v, i) => {
        if (!Number.isFinite(v)) throw new RangeError(`LambdaLinearScheduler: ${k}[${i}] must be a finite number, got ${v}`);
      });
    }
    if (!n) throw new RangeError('LambdaLinearScheduler: needs at least one cycle');
    opts.cycleLengths.forEach((v, i) => {
      if (!(Number.isInteger(v) && v > 0)) throw new RangeError(`LambdaLinearScheduler: cycleLengths[${i}] must be a positive integer, got ${v}`);
    });
    opts.warmUpSteps.forEach((v, i) => {
      if (!(Number.isInteger(v) && v >= 0)) throw new RangeError(`LambdaLinearScheduler: warmUpSteps[${i}] must be an integer >= 0, got ${v}`);
    });
    this.cumCycles = [0];
    for (const c of opts.cycleLengths) this.cumCycles.push(this.cumCycles[this.cumCycles.length - 1] + c);
  }

  /** Upstream's defaults in the LDM configs: 10000 warm-up steps from 1e-6 to 1, then flat. */
  static ldmDefault(warmUpSteps = 10000): LambdaLinearScheduler {
    return new LambdaLinearScheduler({ warmUpSteps: [warmUpSteps], fMin: [1], fMax: [1], fStart: [1e-6], cycleLengths: [1e13] });
  }

  private cycleOf(n: number): number {
    for (let c = 0; c + 1 < this.cumCycles.length; ++c) if (n <= this.cumCycles[c + 1]) return c;
    throw new RangeError(`LambdaLinearScheduler: step ${n} is past the last cycle (total length ${this.cumCycles[this.cumCycles.length - 1]})`);
  }

  factor(n: number): number {
    checkStep('LambdaLinearScheduler', n);
    const c = this.cycleOf(n);
    const t = n - this.cumCycles[c];
    const { warmUpSteps, fMin, fMax, fStart, cycleLengths } = this.opts;
    if (t < warmUpSteps[c]) return ((fMax[c] - fStart[c]) / warmUpSteps[c]) * t + fStart[c];
    return fMin[c] + ((fMax[c] - fMin[c]) * (cycleLengths[c] - t)) / cycleLengths[c];
  }
}

/** Sets every group's lr to initialLr * schedule.factor(step) (call before optimizer step `step`). */
export function applyLrSchedule(opt: { paramGroups: ParamGroup[] }, schedule: LrSchedule, step: number): void {
  const f = schedule.factor(step);
  for (const g of opt.paramGroups) g.lr = g.initialLr * f;
}
