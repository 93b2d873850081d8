// Containers with PyTorch's naming: children are keyed '0', '1', ... so the
// state-dict keys match nn.Sequential / nn.ModuleList checkpoints.
import type { Tensor } from '../tensor/tensor';
import { Module } from './module';

/** A module whose forward maps one tensor to one tensor (what Sequential chains). */
export type TensorModule = Module & { forward(x: Tensor): Tensor };

export class Sequential extends Module {
  private readonly layers: TensorModule[] = [];

  constructor(...modules: TensorModule[]) {
    super();
    for (const m of modules) this.append(m);
  }

  append(m: TensorModule): this {
    this.registerModule(String(this.layers.length), m);
    this.layers.push(m);
    return this;
  }

  get length(): number {
    return this.layers.length;
  }

  /** The i-th layer; negative i counts from the end. */
  get(i: number): TensorModule {
    const j = i < 0 ? i + this.layers.length : i;
    const m = this.layers[j];
    if (!Number.isInteger(j) || !m) throw new RangeError(`Sequential.get(${i}): index out of range for ${this.layers.length} layers`);
    return m;
  }

  [Symbol.iterator](): Iterator<TensorModule> {
    return this.layers[Symbol.iterator]();
  }

  forward(x: Tensor): Tensor {
    let y = x;
    for (const m of this.layers) y = m.forward(y);
    return y;
  }
}

/** Holds submodules under '0', '1', ...; has no forward of its own. */
export class ModuleList<M extends Module = Module> extends Module {
  private readonly items: M[] = [];

  constructor(modules: Iterable<M> = []) {
    super();
    for (const m of modules) this.append(m);
  }

  append(m: M): this {
    this.registerModule(String(this.items.length), m);
    this.items.push(m);
    return this;
  }

  get length(): number {
    return this.items.length;
  }

  get(i: number): M {
    const j = i < 0 ? i + this.items.length : i;
    const m = this.items[j];
    if (!Number.isInteger(j) || !m) throw new RangeError(`ModuleList.get(${i}): index out of range for ${this.items.length} modules`);
    return m;
  }

  [Symbol.iterator](): Iterator<M> {
    return this.items[Symbol.iterator]();
  }

  map<T>(fn: (m: M, i: number) => T): T[] {
    return this.items.map(fn);
  }
}

/** Returns its input unchanged (a placeholder that keeps layer indices aligned with PyTorch). */
export class Identity extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}
