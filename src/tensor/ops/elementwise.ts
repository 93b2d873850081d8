// Elementwise maths, broadcasting, reductions and reshapes, with gradients.
import { record } from '../autograd';
import { type Shape, type Tensor, runOp1, shapeToString, viewHandle, numel } from '../tensor';

/** Sums the broadcast dimensions of a gradient back down to `shape`. */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  if (g.shape.join() === shape.join()) return g;
  return runOp1('sum_to', [g], { shape: [...shape] });
}

function binary(op: 'add' | 'sub' | 'mul' | 'div', a: Tensor, b: Tensor): Tensor {
  const out = runOp1(op, [a, b]);
  return record(out, op, [a, b], (g) => {
    switch (op) {
      case 'add':
        return [sumTo(g, a.shape), sumTo(g, b.shape)];
      case 'sub':
        return [sumTo(g, a.shape), sumTo(neg(g), b.shape)];
      case 'mul':
        return [a.requiresGrad ? sumTo(runOp1('mul', [g, b]), a.shape) : null, b.requiresGrad ? sumTo(runOp1('mul', [g, a]), b.shape) : null];
      case 'div': {
        const ga = a.requiresGrad ? sumTo(runOp1('div', [g, b]), a.shape) : null;
        // d(a/b)/db = -a/b^2 = -out/b
        const gb = b.requiresGrad ? sumTo(runOp1('neg', [runOp1('div', [runOp1('mul', [g, out]), b])]), b.shape) : null;
        return [ga, gb];
      }
    }
  });
}

export const add = (a: Tensor, b: Tensor) => binary('add', a, b);
export const sub = (a: Tensor, b: Tensor) => binary('sub', a, b);
export const mul = (a: Tensor, b: Tensor) => binary('mul', a, b);
export const div = (a: Tensor, b: Tensor) => binary('div', a, b);

/** scale * x + shift */
export function affine(x: Tensor, scale: number, shift = 0): Tensor {
  const out = runOp1('affine', [x], { scale, shift });
  return record(out, 'affine', [x], (g) => [runOp1('affine', [g], { scale })]);
}

export const scale = (x: Tensor, s: number) => affine(x, s, 0);
export const addScalar = (x: Tensor, s: number) => affine(x, 1, s);
export const neg = (x: Tensor) => affine(x, -1, 0);

type UnaryGrad = (g: Tensor, x: Tensor, y: Tensor) => Tensor;
function unary(op: string, x: Tensor, grad: UnaryGrad): Tensor {
  const y = runOp1(op, [x]);
  return record(y, op, [x], (g) => [grad(g, x, y)]);
}

const m = (a: Tensor, b: Tensor) => runOp1('mul', [a, b]);
export const exp = (x: Tensor) => unary('exp', x, (g, _x, y) => m(g, y));
export const log = (x: Tensor) => unary('log', x, (g, x) => runOp1('div', [g, x]));
export const sqrt = (x: Tensor) => unary('sqrt', x, (g, _x, y) => runOp1('div', [runOp1('affine', [g], { scale: 0.5 }), y]));
export const square = (x: Tensor) => unary('square', x, (g, x) => m(g, runOp1('affine', [x], { scale: 2 })));
export const abs = (x: Tensor) => unary('abs', x, (g, x) => m(g, runOp1('sign', [x])));
export const sigmoid = (x: Tensor) =>
  unary('sigmoid', x, (g, _x, y) => m(g, m(y, runOp1('affine', [y], { scale: -1, shift: 1 }))));
export const tanh = (x: Tensor) => unary('tanh', x, (g, _x, y) => m(g, runOp1('affine', [runOp1('square', [y])], { scale: -1, shift: 1 })));
export const relu = (x: Tensor) => unary('relu', x, (g, x) => m(g, runOp1('heaviside', [x])));
export const sin = (x: Tensor) => unary('sin', x, (g, x) => m(g, runOp1('cos', [x])));
export const cos = (x: Tensor) => unary('cos', x, (g, x) => m(g, runOp1('neg', [runOp1('sin', [x])])));

export function clamp(x: Tensor, min = -Infinity, max = Infinity): Tensor {
  const out = runOp1('clamp', [x], { min, max });
  return record(out, 'clamp', [x], (g) => [runOp1('clamp_backward', [g, x], { min, max })]);
}

/** sum_i coeffs[i] * xs[i], all of one shape: one pass for sampler updates. */
export function lincomb(xs: Tensor[], coeffs: number[]): Tensor {
  const out = runOp1('lincomb', xs, { coeffs });
  return record(out, 'lincomb', xs, (g) => coeffs.map((c) => runOp1('affine', [g], { scale: c })));
}

function reduce(op: 'sum' | 'mean', x: Tensor, dims?: number[], keepdim = false): Tensor {
  const out = runOp1(op, [x], { dims, keepdim });
  return record(out, op, [x], (g) => {
    const nd = x.ndim;
    const red = dims ? dims.map((d) => (d < 0 ? d + nd : d)) : x.shape.map((_, i) => i);
    const kept = x.shape.map((s, i) => (red.includes(i) ? 1 : s));
    let gx = runOp1('broadcast_to', [viewHandle(g, kept)], { shape: [...x.shape] });
    if (op === 'mean') {
      const count = red.reduce((acc, d) => acc * x.shape[d], 1);
      gx = runOp1('affine', [gx], { scale: 1 / count });
    }
    return [gx];
  });
}

export const sum = (x: Tensor, dims?: number[], keepdim = false) => reduce('sum', x, dims, keepdim);
export const mean = (x: Tensor, dims?: number[], keepdim = false) => reduce('mean', x, dims, keepdim);

/** Same storage, another shape; -1 infers one dimension. */
export function reshape(x: Tensor, shape: Shape): Tensor {
  const known = shape.reduce((a, d) => (d === -1 ? a : a * d), 1);
  const target = shape.map((d) => (d === -1 ? x.size / known : d));
  if (numel(target) !== x.size || shape.filter((d) => d === -1).length > 1 || !target.every(Number.isInteger))
    throw new RangeError(`reshape: cannot reshape ${shapeToString(x.shape)} to ${shapeToString(shape)}`);
  const out = viewHandle(x, target);
  return record(out, 'reshape', [x], (g) => [viewHandle(g, x.shape)]);
}

export function broadcastTo(x: Tensor, shape: Shape): Tensor {
  const out = runOp1('broadcast_to', [x], { shape: [...shape] });
  return record(out, 'broadcast_to', [x], (g) => [sumTo(g, x.shape)]);
}

/** A copy that owns its storage (and is a separate autograd node). */
export function clone(x: Tensor): Tensor {
  const out = runOp1('cast', [x], { dtype: x.dtype });
  return record(out, 'clone', [x], (g) => [runOp1('cast', [g], { dtype: g.dtype })]);
}

/** A copy cut from the graph. */
export function detach(x: Tensor): Tensor {
  return runOp1('cast', [x], { dtype: x.dtype });
}
