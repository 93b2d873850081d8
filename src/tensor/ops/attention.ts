// Scaled dot-product attention with a memory-efficient native kernel: the
// Lq x Lk score matrix is never materialised, forward or backward.
import { needsGrad, record } from '../autograd';
import { type Tensor, runOp } from '../tensor';

/**
 * softmax(scale * q k^T) v over the last two dims: q (B,H,Lq,D), k (B,H,Lk,D),
 * v (B,H,Lk,Dv) -> (B,H,Lq,Dv). scale defaults to 1/sqrt(D).
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, opts: { scale?: number } = {}): Tensor {
  const attrs = opts.scale === undefined ? {} : { scale: opts.scale };
  const [out, lse] = runOp('attention_forward', [q, k, v], attrs);
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    return out;
  }
  return record(out, 'attention', [q, k, v], (g) => {
    const grads = runOp('attention_backward', [g, q, k, v, out, lse], attrs);
    lse.dispose(); // the backward runs once per graph; the queued op holds its own reference
    return grads.map((gi, i) => ([q, k, v][i].requiresGrad ? gi : (gi.dispose(), null)));
  });
}

/**
 * The same attention, channels-major: q (B,H,D,Lq), k (B,H,D,Lk),
 * v (B,H,Dv,Lk) -> (B,H,Dv,Lq). This is the layout of a UNet's (B, C, L)
 * features split into heads (channel = head * D + d), so the attention
 * blocks need no permutes around it. scale defaults to 1/sqrt(D).
 */
export function scaledDotProductAttentionChannelsMajor(q: Tensor, k: Tensor, v: Tensor, opts: { scale?: number } = {}): Tensor {
  return attentionOp('attention_cm', q, k, v, opts);
}

/**
 * The same attention, sequence-major: q (B,Lq,H,D), k (B,Lk,H,D),
 * v (B,Lk,H,Dv) -> (B,Lq,H,Dv): a linear layer's (B, L, H * D) output
 * reshaped into heads, and the output reshapes back to (B, Lq, H * Dv), with
 * no permutes. scale defaults to 1/sqrt(D).
 */
export function scaledDotProductAttentionSequenceMajor(q: Tensor, k: Tensor, v: Tensor, opts: { scale?: number } = {}): Tensor {
  return attentionOp('attention_blhd', q, k, v, opts);
}

function attentionOp(op: string, q: Tensor, k: Tensor, v: Tensor, opts: { scale?: number }): Tensor {
  const attrs = opts.scale === undefined ? {} : { scale: opts.scale };
  const [out, lse] = runOp(`${op}_forward`, [q, k, v], attrs);
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    return out;
  }
  return record(out, 'attention', [q, k, v], (g) => {
    const grads = runOp(`${op}_backward`, [g, q, k, v, out, lse], attrs);
    lse.dispose();
    return grads.map((gi, i) => ([q, k, v][i].requiresGrad ? gi : (gi.dispose(), null)));
  });
}
