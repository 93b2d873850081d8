// Adam and AdamW (torch.optim semantics) over parameter groups. Each step is
// one fused native op per parameter ("adam_step") that updates the parameter
// and its two moments in place, so parameters keep their identity and no
// intermediate tensors are made.
import { full } from '../tensor/ops/creation';
import { keep } from '../tensor/scope';
import { type Tensor, runOp, runOp1, shapeToString } from '../tensor/tensor';

export type NamedParam = [string, Tensor];

export interface ParamGroupOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

export interface ParamGroupSpec extends ParamGroupOptions {
  params: (Tensor | NamedParam)[];
  /** For logs and checkpoints; defaults to the group's index. */
  name?: string;
}

export interface ParamGroup {
  name: string;
  params: NamedParam[];
  /** The learning rate of the next step; schedules set it (see lr_schedule.ts). */
  lr: number;
  /** The lr the group was created with: schedules multiply this. */
  readonly initialLr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export interface ParamState {
  /** Steps taken by this parameter (the bias correction uses it). */
  step: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/** What state() returns and loadState() takes. Tensors are keyed by parameter name. */
export interface AdamState {
  groups: { name: string; lr: number; initialLr: number; betas: [number, number]; eps: number; weightDecay: number }[];
  params: Map<string, ParamState>;
}

function isGroupSpec(x: unknown): x is ParamGroupSpec {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && 'params' in x && !(x as { isTensor?: boolean }).isTensor;
}

function checkHyper(where: string, g: { lr: number; betas: [number, number]; eps: number; weightDecay: number }): void {
  if (!(Number.isFinite(g.lr) && g.lr >= 0)) throw new RangeError(`${where}: lr must be a finite number >= 0, got ${g.lr}`);
  if (!Array.isArray(g.betas) || g.betas.length !== 2) throw new TypeError(`${where}: betas must be [beta1, beta2]`);
  g.betas.forEach((b, i) => {
    if (!(b >= 0 && b < 1)) throw new RangeError(`${where}: betas[${i}] must be in [0, 1), got ${b}`);
  });
  if (!(Number.isFinite(g.eps) && g.eps >= 0)) throw new RangeError(`${where}: eps must be a finite number >= 0, got ${g.eps}`);
  if (!(Number.isFinite(g.weightDecay) && g.weightDecay >= 0))
    throw new RangeError(`${where}: weightDecay must be a finite number >= 0, got ${g.weightDecay}`);
}

export class Adam {
  readonly paramGroups: ParamGroup[] = [];
  private readonly states = new Map<Tensor, ParamState>();
  private readonly byName = new Map<string, Tensor>();

  /**
   * params: tensors, [name, tensor] pairs, or groups {params, lr?, betas?,
   * eps?, weightDecay?, name?} whose unset options take `defaults`. Unnamed
   * parameters are named by their position over all groups ('0', '1', ...),
   * as torch.optim numbers them.
   */
  constructor(
    params: (Tensor | NamedParam)[] | ParamGroupSpec[],
    defaults: ParamGroupOptions = {},
    protected readonly decoupled = false,
  ) {
    const kind = this.constructor.name;
    const specs: ParamGroupSpec[] = params.length && isGroupSpec(params[0]) ? (params as ParamGroupSpec[]) : [{ params: params as (Tensor | NamedParam)[] }];
    const base = { lr: defaults.lr ?? 1e-3, betas: defaults.betas ?? [0.9, 0.999], eps: defaults.eps ?? 1e-8, weightDecay: defaults.weightDecay ?? (decoupled ? 1e-2 : 0) };
    checkHyper(`${kind} defaults`, base);
    const seen = new Set<Tensor>();
    let index = 0;
    specs.forEach((spec, gi) => {
      if (!isGroupSpec(spec)) throw new TypeError(`${kind}: parameter group ${gi} must be {params, ...}`);
      const name = spec.name ?? String(gi);
      const group: ParamGroup = {
        name,
        params: [],
        lr: spec.lr ?? base.lr,
        initialLr: spec.lr ?? base.lr,
        betas: [...(spec.betas ?? base.betas)] as [number, number],
        eps: spec.eps ?? base.eps,
        weightDecay: spec.weightDecay ?? base.weightDecay,
      };
      checkHyper(`${kind} group '${name}'`, group);
      for (const entry of spec.params) {
        const [pname, t] = Array.isArray(entry) ? entry : [String(index), entry];
        index++;
        if (!t || (t as { isTensor?: boolean }).isTensor !== true) throw new TypeError(`${kind}: parameter '${pname}' is not a Tensor`);
        if (t.disposed) throw new TypeError(`${kind}: parameter '${pname}' has been disposed`);
        if (t.dtype !== 'float32') throw new TypeError(`${kind}: parameter '${pname}' must be float32, got ${t.dtype}`);
        if (seen.has(t)) throw new Error(`${kind}: parameter '${pname}' appears twice (in one group or in two)`);
        if (this.byName.has(pname)) throw new Error(`${kind}: two parameters are named '${pname}'`);
        seen.add(t);
        this.byName.set(pname, t);
        group.params.push([pname, t]);
      }
      this.paramGroups.push(group);
    });
    if (!seen.size) throw new RangeError(`${kind}: got an empty parameter list`);
  }

  /**
   * One update of every parameter that has a gradient (others are skipped,
   * their step count unchanged), queued on the stream: nothing is read back.
   */
  step(): void {
    for (const g of this.paramGroups) {
      checkHyper(`${this.constructor.name} group '${g.name}'`, g);
      for (const [, p] of g.params) {
        if (!p.grad) continue;
        let s = this.states.get(p);
        if (!s) {
          s = { step: 0, expAvg: keep(full(p.shape, 0, 'float32', p.device)), expAvgSq: keep(full(p.shape, 0, 'float32', p.device)) };
          this.states.set(p, s);
        }
        s.step += 1;
        runOp('adam_step', [p, p.grad, s.expAvg, s.expAvgSq], {
          lr: g.lr,
          beta1: g.betas[0],
          beta2: g.betas[1],
          eps: g.eps,
          weight_decay: g.weightDecay,
          decoupled: this.decoupled,
          step: s.step,
        });
      }
    }
  }

  /** Drops every parameter's gradient (zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const g of this.paramGroups)
      for (const [, p] of g.params) {
        p.grad?.dispose();
        p.grad = null;
      }
  }

  /**
   * The optimizer's state: hyperparameters per group and, per parameter that
   * has stepped, its step count and moments. The tensors are the optimizer's
   * own (not copies): finish saving them before the next step().
   */
  state(): AdamState {
    const params = new Map<string, ParamState>();
    for (const g of this.paramGroups)
      for (const [name, p] of g.params) {
        const s = this.states.get(p);
        if (s) params.set(name, { step: s.step, expAvg: s.expAvg, expAvgSq: s.expAvgSq });
      }
    return {
      groups: this.paramGroups.map((g) => ({ name: g.name, lr: g.lr, initialLr: g.initialLr, betas: [...g.betas] as [number, number], eps: g.eps, weightDecay: g.weightDecay })),
      params,
    };
  }

  /**
   * Replaces the whole state (parameters absent from `s` start fresh) with
   * copies of s's tensors: the caller keeps ownership of them. Group
   * hyperparameters are restored when the groups match by count and name.
   * Checks everything before changing anything.
   */
  loadState(s: AdamState): void {
    const kind = this.constructor.name;
    const problems: string[] = [];
    for (const [name, ps] of s.params) {
      const p = this.byName.get(name);
      if (!p) {
        problems.push(`unknown parameter '${name}'`);
        continue;
      }
      if (!(Number.isInteger(ps.step) && ps.step >= 1)) problems.push(`'${name}': step must be an integer >= 1, got ${ps.step}`);
      for (const [what, t] of [['expAvg', ps.expAvg], ['expAvgSq', ps.expAvgSq]] as const) {
        if (!t || t.disposed) problems.push(`'${name}': ${what} is missing or disposed`);
        else if (t.shape.join() !== p.shape.join())
          problems.push(`'${name}': ${what} has shape ${shapeToString(t.shape)}, the parameter ${shapeToString(p.shape)}`);
        else if (t.dtype !== 'float32' && t.dtype !== 'float16') problems.push(`'${name}': ${what} must be float32, got ${t.dtype}`);
      }
    }
    const groupsMatch = s.groups.length === this.paramGroups.length && s.groups.every((g, i) => g.name === this.paramGroups[i].name);
    if (groupsMatch) s.groups.forEach((g) => checkHyper(`${kind}.loadState group '${g.name}'`, g));
    if (problems.length) throw new Error(`${kind}.loadState: ${problems.join('; ')}`);

    this.disposeState();
    for (const [name, ps] of s.params) {
      const p = this.byName.get(name)!;
      this.states.set(p, {
        step: ps.step,
        expAvg: keep(runOp1('cast', [ps.expAvg], { dtype: 'float32' })),
        expAvgSq: keep(runOp1('cast', [ps.expAvgSq], { dtype: 'float32' })),
      });
    }
    if (groupsMatch)
      s.groups.forEach((g, i) => {
        const own = this.paramGroups[i];
        own.lr = g.lr;
        own.betas = [...g.betas] as [number, number];
        own.eps = g.eps;
        own.weightDecay = g.weightDecay;
      });
  }

  private disposeState(): void {
    for (const s of this.states.values()) {
      s.expAvg.dispose();
      s.expAvgSq.dispose();
    }
    this.states.clear();
  }

  /** Frees the moments (the parameters belong to their module). */
  dispose(): void {
    this.disposeState();
  }
}

/** AdamW: decoupled weight decay (p *= 1 - lr * weightDecay), default weightDecay 1e-2. */
export class AdamW extends Adam {
  constructor(params: (Tensor | NamedParam)[] | ParamGroupSpec[], defaults: ParamGroupOptions = {}) {
    super(params, defaults, true);
  }
}

/**
 * Flattens an optimizer state for a safetensors checkpoint: tensors under
 * `${prefix}${param}.exp_avg` / `.exp_avg_sq`, the rest as JSON in
 * metadata[`${prefix}json`]. The tensors are the state's own.
 */
export function optimizerStateToTensors(
  s: AdamState,
  prefix = 'optimizer.',
): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const tensors = new Map<string, Tensor>();
  const steps: Record<string, number> = {};
  for (const [name, ps] of s.params) {
    tensors.set(`${prefix}${name}.exp_avg`, ps.expAvg);
    tensors.set(`${prefix}${name}.exp_avg_sq`, ps.expAvgSq);
    steps[name] = ps.step;
  }
  return { tensors, metadata: { [`${prefix}json`]: JSON.stringify({ groups: s.groups, steps }) } };
}

/** The inverse of optimizerStateToTensors (the tensors are used as given, not copied). */
export function optimizerStateFromTensors(
  tensors: Map<string, Tensor>,
  metadata: Record<string, string>,
  prefix = 'optimizer.',
): AdamState {
  const raw = metadata[`${prefix}json`];
  if (raw === undefined) throw new Error(`optimizer state: metadata has no '${prefix}json' entry`);
  let parsed: { groups: AdamState['groups']; steps: Record<string, number> };
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    throw new Error(`optimizer state: metadata '${prefix}json' is not JSON (${(e as Error).message})`);
  }
  if (!parsed || !Array.isArray(parsed.groups) || typeof parsed.steps !== 'object')
    throw new Error(`optimizer state: metadata '${prefix}json' lacks groups/steps`);
  const params = new Map<string, ParamState>();
  for (const [name, step] of Object.entries(parsed.steps)) {
    const expAvg = tensors.get(`${prefix}${name}.exp_avg`), expAvgSq = tensors.get(`${prefix}${name}.exp_avg_sq`);
    if (!expAvg || !expAvgSq) throw new Error(`optimizer state: tensors '${prefix}${name}.exp_avg' / '.exp_avg_sq' are missing`);
    params.set(name, { step, expAvg, expAvgSq });
  }
  return { groups: parsed.groups, params };
}
