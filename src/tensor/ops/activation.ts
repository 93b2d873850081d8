// SiLU, GELU and softmax with gradients (native forward and backward kernels).
import { record } from '../autograd';
import { type Tensor, runOp1 } from '../tensor';

/** x * sigmoid(x) */
export function silu(x: Tensor): Tensor {
  const y = runOp1('silu', [x]);
  return record(y, 'silu', [x], (g) => [runOp1('silu_backward', [g, x])]);
}

/** torch.nn.functional.gelu: 'none' is the exact erf form, 'tanh' the tanh approximation. */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  if (approximate !== 'none' && approximate !== 'tanh')
    throw new RangeError(`gelu: argument 'approximate' must be 'none' or 'tanh', got '${String(approximate)}'`);
  const y = runOp1('gelu', [x], { approximate });
  return record(y, 'gelu', [x], (g) => [runOp1('gelu_backward', [g, x], { approximate })]);
}

/** Softmax along dim (negative counts from the end). */
export function softmax(x: Tensor, dim = -1): Tensor {
  const y = runOp1('softmax', [x], { dim });
  return record(y, 'softmax', [x], (g) => [runOp1('softmax_backward', [g, y], { dim })]);
}
