// Resampling of (N, C, H, W) feature maps, with gradients.
import { record } from '../autograd';
import { type Tensor, runOp1 } from '../tensor';

/** (N, C, H, W) -> (N, C, 2H, 2W), nearest neighbour (each pixel becomes a 2x2 block). */
export function upsampleNearest2x(x: Tensor): Tensor {
  const out = runOp1('upsample_nearest2x', [x]);
  return record(out, 'upsample_nearest2x', [x], (g) => [runOp1('upsample_nearest2x_backward', [g])]);
}

/** Mean over kernel x kernel windows every `stride` pixels, no padding (torch's avg_pool2d). */
export function avgPool2d(x: Tensor, kernel = 2, stride = kernel): Tensor {
  const out = runOp1('avg_pool2d', [x], { kernel, stride });
  return record(out, 'avg_pool2d', [x], (g) => [runOp1('avg_pool2d_backward', [g], { kernel, stride, shape: [...x.shape] })]);
}
