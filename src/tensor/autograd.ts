// Define-by-run reverse-mode autograd. Ops record a GradNode on their output
// when an input requires a gradient; backward() walks the graph in reverse
// topological order, calling the native backward kernels.
import { keep } from './scope';
import { type GradNode, Tensor, runOp1, shapeToString } from './tensor';

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording the graph (sampling, evaluation, optimizer steps). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t && t.requiresGrad) return true;
  return false;
}

/** Records how `out` was made, when any input needs a gradient. Returns out. */
export function record(
  out: Tensor,
  op: string,
  inputs: (Tensor | null)[],
  backward: (gradOut: Tensor) => (Tensor | null)[],
): Tensor {
  if (!needsGrad(...inputs)) return out;
  out.requiresGrad = true;
  out.gradFn = { op, inputs, backward } satisfies GradNode;
  return out;
}

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, done] = stack.pop()!;
    if (done) {
      order.push(t);
      continue;
    }
    if (visited.has(t)) continue;
    visited.add(t);
    stack.push([t, true]);
    for (const i of t.gradFn?.inputs ?? []) if (i && i.requiresGrad && i.gradFn && !visited.has(i)) stack.push([i, false]);
  }
  return order; // inputs before outputs
}

function add(a: Tensor, b: Tensor): Tensor {
  return runOp1('add', [a, b]);
}

function clone(t: Tensor): Tensor {
  return runOp1('cast', [t], { dtype: t.dtype });
}

export interface BackwardHooks {
  /**
   * Called once per leaf, as soon as its gradient is final in this pass: the
   * last of its uses in the graph has added its part to leaf.grad (a leaf used
   * twice is final after the second). The ops queued before the call made it;
   * what the hook queues runs after them (data-parallel training starts the
   * leaf's bucket allreduce here). Every leaf the graph uses is reported once,
   * also when no gradient reached it (leaf.grad then stays as it was).
   */
  onGradReady?(leaf: Tensor): void;
}

/**
 * Accumulates d(root)/d(leaf) into leaf.grad for every leaf that requires a
 * gradient. gradOut defaults to ones (root must then have one element). The
 * graph is freed afterwards; leaf gradients are kept out of open tidy() scopes.
 */
export function backward(root: Tensor, gradOut?: Tensor, hooks: BackwardHooks = {}): void {
  if (!root.requiresGrad) throw new Error('backward(): the tensor does not require a gradient (no parameter reached it)');
  let seed = gradOut;
  if (!seed) {
    if (root.size !== 1) throw new RangeError(`backward(): gradOut is needed for a tensor of shape ${shapeToString(root.shape)}`);
    seed = runOp1('full', [], { shape: [...root.shape], value: 1 });
  } else if (seed.shape.join() !== root.shape.join()) {
    throw new RangeError(`backward(): gradOut shape ${shapeToString(seed.shape)} != ${shapeToString(root.shape)}`);
  }
  const grads = new Map<Tensor, Tensor>([[root, seed]]);
  const accumulate = (t: Tensor, g: Tensor) => {
    if (!t.gradFn) {
      // A leaf: its gradient outlives the scopes of this step.
      if (t.grad) {
        const sum = add(t.grad, g);
        t.grad.dispose();
        g.dispose();
        t.grad = keep(sum);
      } else {
        t.grad = keep(g);
      }
      return;
    }
    const prev = grads.get(t);
    if (prev) {
      grads.set(t, add(prev, g));
      prev.dispose();
      g.dispose();
    } else grads.set(t, g);
  };

  const order = topoOrder(root);
  // Uses of each leaf still to come (edges from graph nodes), for onGradReady.
  const uses = new Map<Tensor, number>();
  const ready = hooks.onGradReady;
  if (ready) {
    for (const t of order)
      for (const i of t.gradFn?.inputs ?? []) if (i && i.requiresGrad && !i.gradFn) uses.set(i, (uses.get(i) ?? 0) + 1);
  }
  const used = (leaf: Tensor) => {
    const n = uses.get(leaf)! - 1;
    uses.set(leaf, n);
    if (n === 0) ready!(leaf);
  };
  for (let k = order.length - 1; k >= 0; --k) {
    const t = order[k];
    const g = grads.get(t);
    const node = t.gradFn;
    if (!node) continue;
    if (!g) {
      // No gradient reached this node: its uses of leaves add nothing.
      if (ready) for (const i of node.inputs) if (i && i.requiresGrad && !i.gradFn) used(i);
      continue;
    }
    grads.delete(t);
    const inGrads = node.backward(g);
    if (inGrads.length !== node.inputs.length)
      throw new Error(`autograd: backward of ${node.op} returned ${inGrads.length} gradients for ${node.inputs.length} inputs`);
    const seen = new Set<Tensor>([g]);
    node.inputs.forEach((input, i) => {
      let gi = inGrads[i];
      if (!input || !input.requiresGrad || !gi) {
        if (gi && !seen.has(gi)) gi.dispose();
        if (ready && input && input.requiresGrad && !input.gradFn) used(input);
        return;
      }
      if (seen.has(gi)) gi = clone(gi); // each gradient must own its storage
      seen.add(gi);
      if (gi.shape.join() !== input.shape.join())
        throw new Error(`autograd: ${node.op} gave a gradient of shape ${shapeToString(gi.shape)} for an input of shape ${shapeToString(input.shape)}`);
      accumulate(input, gi);
      if (ready && !input.gradFn) used(input);
    });
    if (g !== gradOut) g.dispose();
  }
  for (const t of order) t.gradFn = null; // free the closures and what they saved
}
