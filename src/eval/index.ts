// Evaluation: feature networks, metrics, the reference statistics cache and the eval pipeline.
export * from './metrics';
export * from './stats_cache';
export * from './inception';
export * from './fmnist_classifier';
export * from './run';
export { traceSqrtProduct, symmetricEigenvalues, pivotedCholesky } from './linalg64';
