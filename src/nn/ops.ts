// The differentiable ops, grouped for layer code.
export * as activation from '../tensor/ops/activation';
export * as attention from '../tensor/ops/attention';
export * as conv from '../tensor/ops/conv';
export * as linalg from '../tensor/ops/linalg';
export * as norm from '../tensor/ops/norm';
export * as shape from '../tensor/ops/shape';
