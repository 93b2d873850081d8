// Every differentiable op, for `import { ops } from 'tdq-native'`.
export * from './creation';
export * from './elementwise';
export * from './shape';
export * from './pool';
export * from './pad';
export * from './dropout';
export * from './quant';
export * from './activation';
export * from './attention';
export * from './norm';
export * from './conv';
export * from './linalg';
export * from './qlinear';
