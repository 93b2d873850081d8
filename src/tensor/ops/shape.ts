// Layout ops with gradients: cat, permute / transpose, narrow / chunk, and
// embedding (a gather of rows). Each makes a contiguous copy: the engine has
// no strided views, so a kernel never has to handle strides.
import { record } from '../autograd';
import { type Tensor, runOp1, shapeToString } from '../tensor';

/** The native concat takes at most this many inputs; more are joined in groups. */
const CONCAT_MAX_INPUTS = 16;

function normDim(op: string, arg: string, dim: number, ndim: number): number {
  if (!Number.isInteger(dim)) throw new TypeError(`${op}: argument '${arg}' must be an integer, got ${dim}`);
  if (dim < -ndim || dim >= ndim)
    throw new RangeError(`${op}: argument '${arg}' = ${dim} is out of range for a ${ndim}-dimensional tensor (expected ${-ndim} to ${ndim - 1})`);
  return dim < 0 ? dim + ndim : dim;
}

/** Joins tensors of one dtype along `dim`; all other dims must match. */
export function cat(xs: Tensor[], dim: number): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new RangeError('cat: argument \'xs\' must be a non-empty array of tensors');
  if (xs.length > CONCAT_MAX_INPUTS) {
    // Checked here so that errors name the caller's index, not a group's.
    const x0 = xs[0];
    const d = normDim('cat', 'dim', dim, x0.ndim);
    xs.forEach((x, i) => {
      const same = x.dtype === x0.dtype && x.ndim === x0.ndim && x.shape.every((s, k) => k === d || s === x0.shape[k]);
      if (!same)
        throw new RangeError(`cat: argument 'xs[${i}]' (${x.dtype} ${shapeToString(x.shape)}) does not match 'xs[0]' ` +
          `(${x0.dtype} ${shapeToString(x0.shape)}) outside dimension ${d}`);
    });
    const groups: Tensor[] = [];
    for (let i = 0; i < xs.length; i += CONCAT_MAX_INPUTS) groups.push(cat(xs.slice(i, i + CONCAT_MAX_INPUTS), d));
    return cat(groups, d);
  }
  const out = runOp1('concat', xs, { dim });
  const d = dim < 0 ? dim + out.ndim : dim;
  return record(out, 'cat', xs, (g) => {
    let start = 0;
    return xs.map((x) => {
      const length = x.shape[d];
      const gx = x.requiresGrad ? runOp1('narrow', [g], { dim: d, start, length }) : null;
      start += length;
      return gx;
    });
  });
}

/** y.shape[j] = x.shape[dims[j]] (negative dims count from the end). */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  if (!Array.isArray(dims)) throw new TypeError('permute: argument \'dims\' must be an array of integers');
  const out = runOp1('permute', [x], { dims: [...dims] });
  // Valid by now (the native op checked it): invert for the gradient.
  const inverse = new Array<number>(dims.length);
  dims.forEach((d, j) => (inverse[d < 0 ? d + dims.length : d] = j));
  return record(out, 'permute', [x], (g) => [runOp1('permute', [g], { dims: inverse })]);
}

/** Swaps two dims. */
export function transpose(x: Tensor, d0: number, d1: number): Tensor {
  const a = normDim('transpose', 'd0', d0, x.ndim), b = normDim('transpose', 'd1', d1, x.ndim);
  const dims = x.shape.map((_, i) => i);
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
}

/** The slice [start, start + length) of x along dim (a copy). */
export function narrow(x: Tensor, dim: number, start: number, length: number): Tensor {
  const out = runOp1('narrow', [x], { dim, start, length });
  return record(out, 'narrow', [x], (g) => [runOp1('narrow_backward', [g], { dim, start, length, shape: [...x.shape] })]);
}

/**
 * Splits x along dim into pieces of ceil(size / chunks) (the last may be
 * smaller, and there may be fewer than `chunks` pieces), as torch.chunk; a dim
 * of size 0 gives `chunks` empty pieces.
 */
export function chunk(x: Tensor, chunks: number, dim = 0): Tensor[] {
  if (!Number.isInteger(chunks) || chunks < 1) throw new RangeError(`chunk: argument 'chunks' must be a positive integer, got ${chunks}`);
  const d = normDim('chunk', 'dim', dim, x.ndim);
  const size = x.shape[d];
  const step = Math.ceil(size / chunks);
  if (step === 0) return Array.from({ length: chunks }, () => narrow(x, d, 0, 0));
  const out: Tensor[] = [];
  for (let start = 0; start < size; start += step) out.push(narrow(x, d, start, Math.min(step, size - start)));
  return out;
}

/**
 * Rows of weight (V, D) picked by int32 indices of any shape: (...indices.shape, D).
 * An index outside [0, V) cannot be seen before the op runs: its row is zeros
 * and reading the output (or anything computed from it) rejects with an error naming the index and V.
 */
export function embedding(indices: Tensor, weight: Tensor): Tensor {
  const out = runOp1('embedding', [indices, weight]);
  return record(out, 'embedding', [indices, weight], (g) => [
    null,
    runOp1('embedding_backward', [g, indices], { num_embeddings: weight.shape[0] }),
  ]);
}
