// Matrix products with gradients: matmul (2-D or batched, with transposes)
// and linear (x W^T + b). The backward passes are matmuls themselves.
import { record } from '../autograd';
import { type Tensor, runOp1, viewHandle } from '../tensor';

export interface MatmulOptions {
  /** Use a^T: a is stored (K, M) or (B, K, M). */
  transA?: boolean;
  /** Use b^T: b is stored (N, K) or (B, N, K). */
  transB?: boolean;
}

/** The native op, unrecorded: the building block of the backward passes. */
function mm(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  return runOp1('matmul', [a, b], { transA, transB });
}

/** Sums a batched gradient (B, ...) over the batch when its input was shared (2-D). */
function sumBatch(g: Tensor, input: Tensor): Tensor {
  if (g.ndim === input.ndim) return g;
  const s = runOp1('sum', [g], { dims: [0] });
  g.dispose();
  return s;
}

/**
 * op(a) · op(b), with op(x) = x or x^T. a (M, K) or (B, M, K), b (K, N) or
 * (B, K, N); a 2-D operand is shared by every batch element. Returns (M, N)
 * or (B, M, N).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const tA = opts.transA ?? false, tB = opts.transB ?? false;
  const out = mm(a, b, tA, tB);
  return record(out, 'matmul', [a, b], (g) => {
    // With Â = op(a), B̂ = op(b): dÂ = g B̂^T and dB̂ = Â^T g, transposed back
    // where a or b was given transposed.
    let ga: Tensor | null = null, gb: Tensor | null = null;
    if (a.requiresGrad) ga = sumBatch(tA ? mm(b, g, tB, true) : mm(g, b, false, !tB), a);
    if (b.requiresGrad) {
      if (b.ndim === 2 && a.ndim === 3 && !tA) {
        // Summing over the batch is one GEMM over the stacked rows of a and g.
        const [B, M, K] = a.shape, N = g.shape[2];
        const a2 = viewHandle(a, [B * M, K]), g2 = viewHandle(g, [B * M, N]);
        gb = tB ? mm(g2, a2, true, false) : mm(a2, g2, true, false);
        a2.dispose();
        g2.dispose();
      } else {
        gb = sumBatch(tB ? mm(g, a, true, tA) : mm(a, g, !tA, false), b);
      }
    }
    return [ga, gb];
  });
}

/** x · weight^T + bias: x (..., in), weight (out, in), bias (out) or null -> (..., out). */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  const out = runOp1('linear', [x, weight, bias]);
  return record(out, 'linear', [x, weight, bias], (g) => {
    const [outF, inF] = weight.shape;
    const rows = inF > 0 ? x.size / inF : g.size / Math.max(outF, 1);
    const g2 = viewHandle(g, [rows, outF]);
    let gx: Tensor | null = null, gw: Tensor | null = null, gb: Tensor | null = null;
    if (x.requiresGrad) {
      const r = mm(g2, weight, false, false); // (rows, in)
      gx = viewHandle(r, x.shape);
      r.dispose();
    }
    if (weight.requiresGrad) {
      const x2 = viewHandle(x, [rows, inF]);
      gw = mm(g2, x2, true, false); // (out, in)
      x2.dispose();
    }
    if (bias && bias.requiresGrad) gb = runOp1('sum', [g2], { dims: [0] });
    g2.dispose();
    return [gx, gw, gb];
  });
}
