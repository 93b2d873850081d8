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

  /** Sets the averages from saved tensors (a checkpoint's EMA), copying them. */
  load(saved: Map<string, Tensor>): void {
    for (const [name, s] of this.shadow) {
      const v = saved.get(name);
      if (!v) throw new Error(`Ema.load: the checkpoint has no EMA value for '${name}'`);
      if (v.shape.join() !== s.shape.join()) throw new RangeError(`Ema.load: '${name}' has shape [${v.shape}] in the checkpoint, expected [${s.shape}]`);
      const src = v.dtype === s.dtype ? v : runOp1('cast', [v], { dtype: s.dtype });
      runOp('copy_', [s, src]);
      if (src !== v) src.dispose();
    }
  }

  /**
   * Exchanges the model's weights with the averages, in place: call once to
   * sample or export with the EMA weights, and again to continue training.
   */
  swapInto(model: Module): void {
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const s = this.shadow.get(name);
        if (!s) continue;
        const tmp = runOp1('cast', [p], { dtype: p.dtype });
        runOp('copy_', [p, s]);
        runOp('copy_', [s, tmp]);
        tmp.dispose();
      }
    });
  }

  dispose(): void {
    for (const t of this.shadow.values()) t.dispose();
    this.shadow.clear();
  }
}

/**
 * Runs `fn` with the EMA weights in `model` (none: the model's own) and swaps
 * the training weights back afterwards, also when `fn` throws.
 */
export async function withEmaWeights<T>(ema: Ema | null, model: Module, fn: () => Promise<T> | T): Promise<T> {
  ema?.swapInto(model);
  try {
    return await fn();
  } finally {
    ema?.swapInto(model);
  }
}
