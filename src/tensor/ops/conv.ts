// 2-D convolution with gradients (native im2col + GEMM kernels).
import { record } from '../autograd';
import { type Tensor, runOp, runOp1 } from '../tensor';

export interface Conv2dOptions {
  stride?: number;
  padding?: number;
  /** (N, O): added to every pixel of output channel o of sample n (a UNet block's time embedding). */
  addChannel?: Tensor | null;
  /** (N, O, Ho, Wo): added to the output (a residual connection). */
  residual?: Tensor | null;
}

/**
 * x (N, C, H, W), weight (O, C, kH, kW), bias (O) or null -> (N, O, Ho, Wo)
 * [+ addChannel (N, O) per channel] [+ residual (N, O, Ho, Wo)]
 * with Ho = floor((H + 2*padding - kH) / stride) + 1 (same for Wo).
 */
export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null, opts: Conv2dOptions = {}): Tensor {
  const stride = opts.stride ?? 1, padding = opts.padding ?? 0;
  const addC = opts.addChannel ?? null, res = opts.residual ?? null;
  // The adds are written into the output before the GEMM accumulates onto it:
  // no pass over the output of their own.
  const out = runOp1('conv2d_forward', addC || res ? [x, weight, bias, addC, res] : [x, weight, bias], { stride, padding });
  return record(out, 'conv2d', [x, weight, bias, addC, res], (g) => {
    const gx = x.requiresGrad
      ? runOp1('conv2d_backward_input', [g, weight], { stride, padding, input_shape: [...x.shape] })
      : null;
    let gw: Tensor | null = null, gb: Tensor | null = null;
    const wantBias = !!bias && bias.requiresGrad;
    if (weight.requiresGrad) {
      // The bias gradient rides along with the weight's (one pass over g).
      [gw, gb = null] = runOp('conv2d_backward_weight', [g, x], {
        stride,
        padding,
        kernel_size: [weight.shape[2], weight.shape[3]],
        bias: wantBias,
      });
    } else if (wantBias) {
      gb = runOp1('sum', [g], { dims: [0, 2, 3] });
    }
    const gc = addC && addC.requiresGrad ? runOp1('sum', [g], { dims: [2, 3] }) : null;
    return [gx, gw, gb, gc, res && res.requiresGrad ? g : null];
  });
}
