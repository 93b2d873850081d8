// Diffusion: noise schedules, samplers, and the analytic Gaussian test model.
export * from './schedule';
export * from './samplers/index';
export { GaussianData } from './gaussian';
