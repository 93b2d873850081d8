// Tensors made from nothing or from JS data.
import type { Device, DType } from '../native';
import { type Shape, type Tensor, runOp1, fromArray } from '../tensor';

export { fromArray };

export function full(shape: Shape, value: number, dtype: DType = 'float32', device: Device = 'cpu'): Tensor {
  return runOp1('full', [], { shape: [...shape], value, dtype, device });
}
export const zeros = (shape: Shape, dtype: DType = 'float32', device: Device = 'cpu') => full(shape, 0, dtype, device);
export const ones = (shape: Shape, dtype: DType = 'float32', device: Device = 'cpu') => full(shape, 1, dtype, device);
export const zerosLike = (t: Tensor) => full(t.shape, 0, t.dtype, t.device);
export const onesLike = (t: Tensor) => full(t.shape, 1, t.dtype, t.device);
export const scalar = (value: number) => full([], value);

export function cast(x: Tensor, dtype: DType): Tensor {
  return runOp1('cast', [x], { dtype });
}
