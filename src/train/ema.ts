// Exponential moving average of the weights, as LDM's LitEma: the decay
// warms up as min(decay, (1 + n) / (10 + n)) over the first updates.
import type { Module } from '../nn/module';
import { lincomb } from '../tensor/ops/elementwise';
import { keep } from '../tensor/scope';
import { type Tensor, runOp, runOp1 } from '../tensor/tensor';
import { noGrad } from '../tensor/autograd';

export class Ema {
  readonly shadow = new Map<string, Tensor>();
  numUpdates = 0;

  constructor(model: Module, readonly decay = 0.9999, readonly warmup = true) {
    if (!(decay >= 0 && decay <= 1)) throw new RangeError(`Ema: decay must be in [0, 1], got ${decay}`);
    for (const [name, p] of model.namedParameters()) this.shadow.set(name, keep(runOp1('cast', [p], { dtype: p.dtype })));
  }

  currentDecay(): number {
    return this.warmup ? Math.min(this.decay, (1 + this.numUpdates) / (10 + this.numUpdates)) : this.decay;
  }

  /** shadow <- d * shadow + (1 - d) * param, in place. */
  update(model: Module): void {
    const d = this.currentDecay();
    ++this.numUpdates;
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const s = this.shadow.get(name);
        if (!s) throw new Error(`Ema: the model has a parameter '${name}' that the EMA does not track`);
        const mixed = lincomb([s, p], [d, 1 - d]);
        runOp('copy_', [s, mixed]);
        mixed.dispose();
      }
    });
  }

  /** Copies the averaged weights into a model (for sampling or export). */
  copyTo(model: Module): void {
    model.loadStateDict(this.shadow, { strict: false });
  }

  dispose(): void {
    for (const t of this.shadow.values()) t.dispose();
    this.shadow.clear();
  }
}
