// GroupNorm and LayerNorm with gradients. The native forward also returns the
// per-group (per-row) mean and 1/std; they are kept for the backward only
// when a gradient is needed.
import { needsGrad, record } from '../autograd';
import { type Tensor, runOp } from '../tensor';

type NormOp = 'group_norm' | 'layer_norm';

function normalize(op: NormOp, x: Tensor, weight: Tensor | null, bias: Tensor | null, attrs: Record<string, number | boolean>): Tensor {
  const [y, mean, rstd] = runOp(`${op}_forward`, [x, weight, bias], attrs);
  if (!needsGrad(x, weight, bias)) {
    mean.dispose();
    rstd.dispose();
    return y;
  }
  // With silu the backward recomputes the GroupNorm output from x, the
  // statistics, weight and bias.
  const fused = attrs.silu === true;
  return record(y, fused ? `${op}_silu` : op, [x, weight, bias], (g) => {
    const [dx, dw, db] = runOp(`${op}_backward`, fused ? [g, x, mean, rstd, weight, bias] : [g, x, mean, rstd, weight], attrs);
    // The backward runs once per graph; the queued op holds its own references.
    mean.dispose();
    rstd.dispose();
    const keepW = weight !== null && weight.requiresGrad;
    const keepB = bias !== null && bias.requiresGrad;
    if (!keepW) dw.dispose();
    if (!keepB) db.dispose();
    return [x.requiresGrad ? dx : (dx.dispose(), null), keepW ? dw : null, keepB ? db : null];
  });
}

/** torch.nn.functional.group_norm: x (N, C, ...), weight and bias (C) or null. */
export function groupNorm(x: Tensor, numGroups: number, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  return normalize('group_norm', x, weight, bias, { num_groups: numGroups, eps });
}

/**
 * silu(group_norm(x)) in one native pass each way: the GroupNorm + SiLU pair
 * of the UNet blocks, without the GroupNorm output in memory.
 */
export function groupNormSiLU(x: Tensor, numGroups: number, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  return normalize('group_norm', x, weight, bias, { num_groups: numGroups, eps, silu: true });
}

/** torch.nn.functional.layer_norm over the last dimension: weight and bias (D) or null. */
export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  return normalize('layer_norm', x, weight, bias, { eps });
}
