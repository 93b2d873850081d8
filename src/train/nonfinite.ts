// Where a non-finite loss or gradient comes from. Runs only after a step's
// loss or gradient norm came out NaN/Inf, so a normal step pays nothing for
// it: the weights are checked, then the failing batch's forward is rerun
// (same generator states, so the same noise, timesteps and dropout) with a
// finiteness check on the output of every module; the first module to
// finish with a non-finite output is where it started.
import type { Module } from '../nn/module';
import { noGrad } from '../tensor/autograd';
import { keep, tidy } from '../tensor/scope';
import { type Tensor, runOp1 } from '../tensor/tensor';

export type NanPolicy = 'skip' | 'stop';
export const NAN_POLICIES: readonly NanPolicy[] = ['stop', 'skip'];

/** Training stopped at a non-finite loss or gradient (policy 'stop'). */
export class NonFiniteError extends Error {
  constructor(
    readonly step: number,
    readonly where: string,
    readonly checkpoint: string | null,
  ) {
    super(
      `training diverged at step ${step}: ${where}. ` +
        (checkpoint ? `Checkpoint of the last good state (step ${step - 1}): ${checkpoint}. ` : 'No checkpoint was written: the weights themselves are not finite. ') +
        'Lower the learning rate or set training.grad_clip, then --resume; or --resume with --on-nan skip to leave such batches out.',
    );
    this.name = 'NonFiniteError';
  }
}

/** A scalar that is finite exactly when every element of `ts` is (a sum of squares in double). */
function finiteProbe(ts: Tensor[]): Tensor {
  return runOp1('grad_norm_sq', ts);
}

function isTensor(v: unknown): v is Tensor {
  return typeof v === 'object' && v !== null && (v as { isTensor?: boolean }).isTensor === true;
}

async function firstNonFinite(probes: [string, Tensor][]): Promise<string | null> {
  let found: string | null = null;
  for (const [name, t] of probes) {
    if (found === null && !Number.isFinite(await t.item())) found = name;
    t.dispose();
  }
  return found;
}

/** The first parameter (in state-dict order) whose value is not finite. */
export async function nonFiniteParameter(model: Module): Promise<string | null> {
  return firstNonFinite(model.namedParameters().map(([n, p]) => [n, finiteProbe([p])]));
}

/** The first parameter whose gradient is not finite. */
export async function nonFiniteGradient(model: Module): Promise<string | null> {
  return firstNonFinite(model.namedParameters().filter(([, p]) => p.grad).map(([n, p]) => [n, finiteProbe([p.grad!])]));
}

/**
 * Runs `forward` (synchronous, without recording the graph) with a
 * finiteness probe on the output of every module of `model`, and on `inputs`.
 * Returns 'the input batch', the module's name (the root is 'the model
 * output'), or null when every output is finite.
 */
export async function firstNonFiniteModule(model: Module, inputs: Tensor[], forward: () => unknown): Promise<string | null> {
  const probes: [string, Tensor][] = [['the input batch', finiteProbe(inputs)]];
  const patched: [Module, PropertyDescriptor | undefined][] = [];
  for (const [name, m] of model.namedModules()) {
    const own = Object.getOwnPropertyDescriptor(m, 'forward');
    const orig = (m as unknown as { forward: (...a: unknown[]) => unknown }).forward;
    patched.push([m, own]);
    Object.defineProperty(m, 'forward', {
      configurable: true,
      writable: true,
      value: (...args: unknown[]) => {
        const out = orig.apply(m, args);
        const ts = (Array.isArray(out) ? out : [out]).filter(isTensor);
        if (ts.length) probes.push([name === '' ? 'the model output' : `module '${name}' (${m.constructor.name})`, keep(finiteProbe(ts))]);
        return out;
      },
    });
  }
  try {
    noGrad(() => tidy(() => void forward()));
  } finally {
    for (const [m, own] of patched) {
      if (own) Object.defineProperty(m, 'forward', own);
      else delete (m as unknown as { forward?: unknown }).forward;
    }
  }
  return firstNonFinite(probes);
}
