// Parameter initialisers with PyTorch's default formulas (torch.nn.init and
// the reset_parameters of nn.Linear / nn.Conv2d), drawn from a seeded
// Generator so a model's initial weights depend only on the seed.
import { full } from '../tensor/ops/creation';
import { Generator } from '../tensor/random';
import { type Device, type Shape, type Tensor, numel, runOp1, shapeToString } from '../tensor/tensor';

let fallback: Generator | undefined;

/** The generator used when none is passed (seed 0), like PyTorch's global one. */
export function defaultInitGenerator(): Generator {
  return (fallback ??= new Generator(0));
}

function checkShape(fn: string, shape: Shape): void {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0))
    throw new RangeError(`${fn}: shape ${shapeToString(shape)} must hold non-negative integers`);
}

/** Advances gen by numel(shape) draws, as Generator.rand/randn do, and returns the offset to draw at. */
function take(gen: Generator, shape: Shape): number {
  const at = gen.offset;
  gen.offset += numel(shape);
  return at;
}

/** U(low, high), float32. */
export function uniform(shape: Shape, low: number, high: number, gen: Generator = defaultInitGenerator(), device: Device = 'cpu'): Tensor {
  checkShape('uniform', shape);
  if (!(Number.isFinite(low) && Number.isFinite(high) && low <= high))
    throw new RangeError(`uniform: need finite low <= high, got low=${low}, high=${high}`);
  return runOp1('rand', [], { shape: [...shape], seed: gen.seed, offset: take(gen, shape), low, high, device });
}

/** N(mean, std^2), float32. */
export function normal(shape: Shape, mean = 0, std = 1, gen: Generator = defaultInitGenerator(), device: Device = 'cpu'): Tensor {
  checkShape('normal', shape);
  if (!(Number.isFinite(mean) && Number.isFinite(std) && std >= 0)) throw new RangeError(`normal: need finite mean and std >= 0, got mean=${mean}, std=${std}`);
  return runOp1('randn', [], { shape: [...shape], seed: gen.seed, offset: take(gen, shape), mean, std, device });
}

export function zeros(shape: Shape, device: Device = 'cpu'): Tensor {
  checkShape('zeros', shape);
  return full(shape, 0, 'float32', device);
}

export function ones(shape: Shape, device: Device = 'cpu'): Tensor {
  checkShape('ones', shape);
  return full(shape, 1, 'float32', device);
}

/** torch.nn.init._calculate_fan_in_and_fan_out: dims 0 and 1 times the receptive field. */
export function fanInAndFanOut(shape: Shape): { fanIn: number; fanOut: number } {
  if (shape.length < 2)
    throw new RangeError(`fanInAndFanOut: needs at least 2 dimensions, got shape ${shapeToString(shape)}`);
  const receptive = shape.slice(2).reduce((a, d) => a * d, 1);
  return { fanIn: shape[1] * receptive, fanOut: shape[0] * receptive };
}

/** torch.nn.init.calculate_gain for the nonlinearities kaiming init uses. */
export function calculateGain(nonlinearity: 'linear' | 'relu' | 'leaky_relu' | 'tanh' | 'sigmoid', param?: number): number {
  switch (nonlinearity) {
    case 'linear':
    case 'sigmoid':
      return 1;
    case 'tanh':
      return 5 / 3;
    case 'relu':
      return Math.SQRT2;
    case 'leaky_relu': {
      const slope = param ?? 0.01;
      return Math.sqrt(2 / (1 + slope * slope));
    }
  }
}

/**
 * torch.nn.init.kaiming_uniform_(mode='fan_in', nonlinearity='leaky_relu'):
 * U(-b, b) with b = gain * sqrt(3 / fanIn), gain = sqrt(2 / (1 + a^2)).
 * The default a = sqrt(5) is what nn.Linear and nn.Conv2d use (b = 1/sqrt(fanIn)).
 */
export function kaimingUniform(shape: Shape, fanIn: number, a = Math.sqrt(5), gen: Generator = defaultInitGenerator(), device: Device = 'cpu'): Tensor {
  if (!(Number.isInteger(fanIn) && fanIn > 0)) throw new RangeError(`kaimingUniform: fanIn must be a positive integer, got ${fanIn}`);
  const bound = calculateGain('leaky_relu', a) * Math.sqrt(3 / fanIn);
  return uniform(shape, -bound, bound, gen, device);
}

/** torch.nn.init.xavier_uniform_: U(-b, b), b = gain * sqrt(6 / (fanIn + fanOut)). */
export function xavierUniform(shape: Shape, gain = 1, gen: Generator = defaultInitGenerator(), device: Device = 'cpu'): Tensor {
  const { fanIn, fanOut } = fanInAndFanOut(shape);
  const bound = gain * Math.sqrt(6 / (fanIn + fanOut));
  return uniform(shape, -bound, bound, gen, device);
}

/** Bias default of nn.Linear / nn.Conv2d: U(-1/sqrt(fanIn), 1/sqrt(fanIn)) (0 bound when fanIn is 0). */
export function defaultBias(outFeatures: number, fanIn: number, gen: Generator = defaultInitGenerator(), device: Device = 'cpu'): Tensor {
  const bound = fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
  return uniform([outFeatures], -bound, bound, gen, device);
}

function checkPositive(fn: string, what: Record<string, number>): void {
  for (const [k, v] of Object.entries(what))
    if (!(Number.isInteger(v) && v > 0)) throw new RangeError(`${fn}: ${k} must be a positive integer, got ${v}`);
}

/**
 * The initial weight (out, in) and bias (out) of nn.Linear, drawn weight
 * first as reset_parameters does. bias is null when not wanted (no draws).
 */
export function linearInit(
  inFeatures: number,
  outFeatures: number,
  opts: { bias?: boolean; gen?: Generator; device?: Device } = {},
): { weight: Tensor; bias: Tensor | null } {
  checkPositive('linearInit', { inFeatures, outFeatures });
  const gen = opts.gen ?? defaultInitGenerator();
  const weight = kaimingUniform([outFeatures, inFeatures], inFeatures, Math.sqrt(5), gen, opts.device);
  const bias = (opts.bias ?? true) ? defaultBias(outFeatures, inFeatures, gen, opts.device) : null;
  return { weight, bias };
}

/** The initial weight (out, in, kH, kW) and bias (out) of nn.Conv2d (groups = 1). */
export function conv2dInit(
  inChannels: number,
  outChannels: number,
  kernel: number | [number, number],
  opts: { bias?: boolean; gen?: Generator; device?: Device } = {},
): { weight: Tensor; bias: Tensor | null } {
  const [kh, kw] = typeof kernel === 'number' ? [kernel, kernel] : kernel;
  checkPositive('conv2dInit', { inChannels, outChannels, kernelH: kh, kernelW: kw });
  const gen = opts.gen ?? defaultInitGenerator();
  const fanIn = inChannels * kh * kw;
  const weight = kaimingUniform([outChannels, inChannels, kh, kw], fanIn, Math.sqrt(5), gen, opts.device);
  const bias = (opts.bias ?? true) ? defaultBias(outChannels, fanIn, gen, opts.device) : null;
  return { weight, bias };
}
