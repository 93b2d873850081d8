// Gradient clipping by the global 2-norm (torch.nn.utils.clip_grad_norm_),
// entirely on the stream: the norm is never read back to JS unless asked.
import { full } from '../tensor/ops/creation';
import { type Tensor, runOp, runOp1 } from '../tensor/tensor';

// Inputs per native call (grad_norm_sq accepts up to 4096).
const CHUNK = 4096;

function gradsOf(params: Iterable<Tensor>): Tensor[] {
  const grads: Tensor[] = [];
  for (const p of params) if (p.grad) grads.push(p.grad);
  return grads;
}

/** sqrt(sum over every gradient of sum(g^2)), as a scalar tensor (accumulated in double). */
export function gradNorm(params: Iterable<Tensor>): Tensor {
  const grads = gradsOf(params);
  if (!grads.length) return full([], 0);
  let sq = runOp1('grad_norm_sq', grads.slice(0, CHUNK));
  for (let i = CHUNK; i < grads.length; i += CHUNK) {
    const part = runOp1('grad_norm_sq', grads.slice(i, i + CHUNK));
    const sum = runOp1('add', [sq, part]);
    sq.dispose();
    part.dispose();
    sq = sum;
  }
  const norm = runOp1('sqrt', [sq]);
  sq.dispose();
  return norm;
}

/**
 * Scales every gradient in place by min(1, maxNorm / (norm + 1e-6)), where
 * norm is the 2-norm of all gradients together. Parameters without a
 * gradient are skipped. Returns the norm before clipping (a scalar tensor the
 * caller disposes); nothing is read back to JS.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  if (!(Number.isFinite(maxNorm) && maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be a finite number > 0, got ${maxNorm}`);
  const list = [...params];
  const norm = gradNorm(list);
  const grads = gradsOf(list);
  for (let i = 0; i < grads.length; i += CHUNK) runOp('clip_scale_', [norm, ...grads.slice(i, i + CHUNK)], { max_norm: maxNorm });
  return norm;
}

/** clipGradNorm, then waits for the norm (for logging): resolves to it as a number. */
export async function clipGradNormAsync(params: Iterable<Tensor>, maxNorm: number): Promise<number> {
  const norm = clipGradNorm(params, maxNorm);
  try {
    return await norm.item();
  } finally {
    norm.dispose();
  }
}
