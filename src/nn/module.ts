// The Module base: a tree of named parameters, buffers and submodules whose
// flattened names are PyTorch's state-dict keys ("input_blocks.1.0.in_layers.2.weight"),
// so checkpoints convert to and from PyTorch by name alone.
import { noGrad } from '../tensor/autograd';
import { keep } from '../tensor/scope';
import { type Device, type Tensor, runOp, runOp1, shapeToString } from '../tensor/tensor';

export interface LoadStateDictOptions {
  /** Every key of the module must be in the dict and nothing else (default true). */
  strict?: boolean;
}

export interface LoadStateDictResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

/** Thrown by loadStateDict; lists every problem at once, as PyTorch does. */
export class StateDictError extends Error {
  constructor(
    readonly moduleName: string,
    readonly missingKeys: string[],
    readonly unexpectedKeys: string[],
    readonly mismatches: { key: string; expected: readonly number[]; got: readonly number[] }[],
  ) {
    const parts: string[] = [];
    for (const m of mismatches)
      parts.push(`size mismatch for ${m.key}: expected shape ${shapeToString(m.expected)}, got ${shapeToString(m.got)}`);
    if (missingKeys.length) parts.push(`missing keys: ${missingKeys.map((k) => `"${k}"`).join(', ')}`);
    if (unexpectedKeys.length) parts.push(`unexpected keys: ${unexpectedKeys.map((k) => `"${k}"`).join(', ')}`);
    super(`error(s) loading the state dict of ${moduleName}:\n  ${parts.join('\n  ')}`);
    this.name = 'StateDictError';
  }
}

const FLOAT_DTYPES = new Set(['float32', 'float16']);

function checkName(kind: string, name: string, owner: Module): void {
  if (typeof name !== 'string' || name === '' || name.includes('.'))
    throw new TypeError(`${owner.constructor.name}.register${kind}: name must be a non-empty string without '.', got ${JSON.stringify(name)}`);
}

/**
 * Base of every layer. Subclasses register their tensors and children in the
 * constructor, in the order PyTorch's module registers them (the state-dict
 * order follows registration). Parameters are updated in place by the
 * optimizers: a parameter Tensor keeps its identity for the whole run.
 */
export abstract class Module {
  /** Dropout and similar layers behave differently in training; set by train()/eval(). */
  training = true;
  private readonly params_ = new Map<string, Tensor>();
  private readonly buffers_ = new Map<string, { tensor: Tensor; persistent: boolean }>();
  private readonly modules_ = new Map<string, Module>();

  private assertFree(kind: string, name: string): void {
    checkName(kind, name, this);
    if (this.params_.has(name) || this.buffers_.has(name) || this.modules_.has(name))
      throw new Error(`${this.constructor.name}.register${kind}: '${name}' is already registered`);
  }

  /** Adds a trainable tensor (sets requiresGrad and keeps it out of tidy() scopes). Returns it. */
  registerParameter(name: string, t: Tensor): Tensor {
    this.assertFree('Parameter', name);
    if (!FLOAT_DTYPES.has(t.dtype)) throw new TypeError(`${this.constructor.name}.registerParameter('${name}'): a parameter must be floating point, got ${t.dtype}`);
    keep(t);
    t.requiresGrad = true;
    this.params_.set(name, t);
    return t;
  }

  /**
   * Adds a tensor that is state but not trained (running statistics, fixed
   * tables). Persistent buffers are part of the state dict.
   */
  registerBuffer(name: string, t: Tensor, opts: { persistent?: boolean } = {}): Tensor {
    this.assertFree('Buffer', name);
    keep(t);
    t.requiresGrad = false;
    this.buffers_.set(name, { tensor: t, persistent: opts.persistent ?? true });
    return t;
  }

  registerModule<M extends Module>(name: string, m: M): M {
    this.assertFree('Module', name);
    if (!(m instanceof Module)) throw new TypeError(`${this.constructor.name}.registerModule('${name}'): not a Module`);
    this.modules_.set(name, m);
    return m;
  }

  /** Puts `m` in the place of the registered submodule `name` (e.g. a quantized copy of it); returns the old one, not disposed. */
  replaceModule(name: string, m: Module): Module {
    const old = this.modules_.get(name);
    if (!old) throw new RangeError(`${this.constructor.name}.replaceModule('${name}'): no such submodule`);
    if (!(m instanceof Module)) throw new TypeError(`${this.constructor.name}.replaceModule('${name}'): not a Module`);
    this.modules_.set(name, m);
    return old;
  }

  /** The direct submodules, in registration order. */
  namedChildren(): [string, Module][] {
    return [...this.modules_];
  }

  children(): Module[] {
    return [...this.modules_.values()];
  }

  /** This module ('' or the prefix) and every descendant, depth first, each once. */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [];
    const seen = new Set<Module>();
    const walk = (m: Module, p: string) => {
      if (seen.has(m)) return;
      seen.add(m);
      out.push([p, m]);
      for (const [n, c] of m.modules_) walk(c, p ? `${p}.${n}` : n);
    };
    walk(this, prefix);
    return out;
  }

  /**
   * Every parameter with its state-dict key, in registration order. A tensor
   * shared by two modules appears once (under its first name), so an
   * optimizer never steps it twice.
   */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [p, m] of this.namedModules(prefix))
      for (const [n, t] of m.params_) {
        if (seen.has(t)) continue;
        seen.add(t);
        out.push([p ? `${p}.${n}` : n, t]);
      }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Every buffer (persistent or not) with its key. */
  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [p, m] of this.namedModules(prefix))
      for (const [n, b] of m.buffers_) {
        if (seen.has(b.tensor)) continue;
        seen.add(b.tensor);
        out.push([p ? `${p}.${n}` : n, b.tensor]);
      }
    return out;
  }

  /**
   * Parameters and persistent buffers by key, module by module (each module's
   * parameters, then its buffers, then its children), as PyTorch orders them.
   * The values are the module's own tensors, not copies: do not dispose them,
   * and finish reading them (e.g. await writeSafetensors) before the next
   * optimizer step changes them.
   */
  stateDict(prefix = ''): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    const walk = (m: Module, p: string) => {
      for (const [n, t] of m.params_) out.set(p + n, t);
      for (const [n, b] of m.buffers_) if (b.persistent) out.set(p + n, b.tensor);
      for (const [n, c] of m.modules_) walk(c, `${p}${n}.`);
    };
    walk(this, prefix ? `${prefix}.` : '');
    return out;
  }

  /**
   * Copies values into the existing parameters and buffers (their storage and
   * identity stay; float16 values are converted to the parameter's dtype).
   * Checks everything before changing anything: a shape mismatch is always an
   * error; with strict (the default) missing and unexpected keys are too.
   * The caller keeps ownership of the dict's tensors.
   */
  loadStateDict(dict: Map<string, Tensor>, opts: LoadStateDictOptions = {}): LoadStateDictResult {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const missingKeys = [...own.keys()].filter((k) => !dict.has(k));
    const unexpectedKeys = [...dict.keys()].filter((k) => !own.has(k));
    const mismatches: StateDictError['mismatches'] = [];
    const typeErrors: string[] = [];
    for (const [k, dst] of own) {
      const src = dict.get(k);
      if (!src) continue;
      if (src.disposed) typeErrors.push(`${k}: the given tensor has been disposed`);
      else if (src.shape.join() !== dst.shape.join()) mismatches.push({ key: k, expected: dst.shape, got: src.shape });
      else if (src.dtype !== dst.dtype && !(FLOAT_DTYPES.has(src.dtype) && FLOAT_DTYPES.has(dst.dtype)))
        typeErrors.push(`${k}: expected dtype ${dst.dtype}, got ${src.dtype}`);
    }
    if (typeErrors.length)
      throw new TypeError(`error(s) loading the state dict of ${this.constructor.name}:\n  ${typeErrors.join('\n  ')}`);
    if (mismatches.length || (strict && (missingKeys.length || unexpectedKeys.length)))
      throw new StateDictError(this.constructor.name, strict ? missingKeys : [], strict ? unexpectedKeys : [], mismatches);
    noGrad(() => {
      for (const [k, dst] of own) {
        const given = dict.get(k);
        if (!given) continue;
        const src = given.to(dst.device); // a file's tensors (cpu) into a model on cuda
        if (src.dtype === dst.dtype) runOp('copy_', [dst, src]);
        else {
          const converted = runOp1('cast', [src], { dtype: dst.dtype });
          runOp('copy_', [dst, converted]);
          converted.dispose(); // the queued copy keeps its storage alive until it has run
        }
        if (src !== given) src.dispose();
      }
    });
    return { missingKeys, unexpectedKeys };
  }

  /** Sets training mode here and below. Returns this. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Drops every parameter's gradient (PyTorch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const t of this.parameters()) {
      t.grad?.dispose();
      t.grad = null;
    }
  }

  /** Frees every parameter (and its gradient) and buffer, here and below. The module is unusable afterwards. */
  dispose(): void {
    for (const [, m] of this.namedModules()) {
      for (const t of m.params_.values()) {
        t.grad?.dispose();
        t.grad = null;
        t.dispose();
      }
      for (const b of m.buffers_.values()) b.tensor.dispose();
    }
  }

  /**
   * Moves every parameter (and its gradient) and buffer, here and below, to
   * `device` in place: the tensors keep their identity, so layers' fields and
   * an optimizer's list still hold them. Returns this.
   */
  to(device: Device): this {
    const move = (t: Tensor) => {
      if (t.disposed || t.device === device) return;
      t.adoptStorage(t.to(device));
    };
    for (const [, m] of this.namedModules()) {
      for (const t of m.params_.values()) {
        move(t);
        if (t.grad) move(t.grad);
      }
      for (const b of m.buffers_.values()) move(b.tensor);
    }
    return this;
  }

  /** The device of the first parameter or buffer ('cpu' for a module without tensors). */
  device(): Device {
    for (const [, m] of this.namedModules()) {
      for (const t of m.params_.values()) if (!t.disposed) return t.device;
      for (const b of m.buffers_.values()) if (!b.tensor.disposed) return b.tensor.device;
    }
    return 'cpu';
  }

  /** Number of scalars in the parameters. */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }
}
