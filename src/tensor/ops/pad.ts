import { record } from '../autograd';
import { type Tensor, runOp1 } from '../tensor';

/** Zero padding of the last two dims by [left, right, top, bottom] (like F.pad(x, (l, r, t, b))). */
export function pad2d(x: Tensor, pads: [number, number, number, number]): Tensor {
  const out = runOp1('pad2d', [x], { pads });
  return record(out, 'pad2d', [x], (g) => [runOp1('pad2d_backward', [g], { pads })]);
}
