// Pooling and resampling of (N, C, H, W) maps, with gradients: the UNets'
// nearest 2x upsampling and average pooling, and the padded/max/global pooling
// and bilinear resizing the FID InceptionV3 and the Fashion-MNIST classifier need.
import { record } from '../autograd';
import { type Tensor, runOp1, shapeToString } from '../tensor';
import { mean } from './elementwise';

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

export interface Pool2dOptions {
  /** Default: the kernel. */
  stride?: number;
  /** Implicit padding on every side, at most kernel / 2 (default 0). */
  padding?: number;
}

/**
 * Maximum over kernel x kernel windows (torch's max_pool2d, ceil_mode=False):
 * the padding never wins. The gradient goes to the first maximum of each window.
 */
export function maxPool2d(x: Tensor, kernel: number, opts: Pool2dOptions = {}): Tensor {
  const attrs = { kernel, stride: opts.stride ?? kernel, padding: opts.padding ?? 0 };
  const out = runOp1('max_pool2d', [x], attrs);
  return record(out, 'max_pool2d', [x], (g) => [runOp1('max_pool2d_backward', [g, x], attrs)]);
}

export interface AvgPool2dPaddedOptions extends Pool2dOptions {
  /** Whether the zero padding counts in each window's divisor (torch's default: true). */
  countIncludePad?: boolean;
}

/** torch's avg_pool2d(x, kernel, stride, padding, count_include_pad=...) with ceil_mode=False. */
export function avgPool2dPadded(x: Tensor, kernel: number, opts: AvgPool2dPaddedOptions = {}): Tensor {
  const attrs = {
    kernel,
    stride: opts.stride ?? kernel,
    padding: opts.padding ?? 0,
    count_include_pad: opts.countIncludePad ?? true,
  };
  const out = runOp1('avg_pool2d_padded', [x], attrs);
  return record(out, 'avg_pool2d_padded', [x], (g) => [
    runOp1('avg_pool2d_padded_backward', [g], { ...attrs, shape: [...x.shape] }),
  ]);
}

/** (N, C, H, W) -> (N, C, 1, 1), the mean of each plane (adaptive_avg_pool2d to 1x1). */
export function globalAvgPool2d(x: Tensor): Tensor {
  if (x.ndim !== 4) throw new RangeError(`globalAvgPool2d: argument 'x' must have 4 dimensions, got shape ${shapeToString(x.shape)}`);
  return mean(x, [2, 3], true);
}

/**
 * Where output pixels sample the input (see native/cpu/resize_bilinear.cpp):
 * 'half_pixel' is torch's F.interpolate(mode='bilinear', align_corners=False),
 * 'align_corners' its align_corners=True, 'asymmetric' TF1's resize_bilinear.
 */
export type ResizeMode = 'half_pixel' | 'align_corners' | 'asymmetric';

/** Bilinear resampling (no antialiasing) of (N, C, H, W) to (N, C, height, width). */
export function resizeBilinear(x: Tensor, size: readonly [number, number], mode: ResizeMode = 'half_pixel'): Tensor {
  const attrs = { size: [size[0], size[1]], mode };
  const out = runOp1('resize_bilinear', [x], attrs);
  return record(out, 'resize_bilinear', [x], (g) => [runOp1('resize_bilinear_backward', [g], { ...attrs, shape: [...x.shape] })]);
}
