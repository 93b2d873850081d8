// tdq-native's public API.
export { loadPipeline, DiffusionPipeline, DEFAULT_MODEL, type GenerateOptions, type GeneratedImages } from './pipeline';
export { train, type TrainOptions, type TrainResult } from './train/trainer';
export { loadConfig, parseConfig, ConfigError, type Config } from './config';
export { sample, type SamplerName, type EpsModel } from './diffusion/samplers';
export { NoiseSchedule, makeBetaSchedule } from './diffusion/schedule';
export { UNetModel } from './models/openai_unet';
export { DDPMUNet } from './models/ddpm_unet';
export { PixelDiffusion, buildUNet } from './models/diffusion';
export { readSafetensors, writeSafetensors, inspectSafetensors } from './io/safetensors';
export { loadTorchCheckpoint, TorchCheckpointReader, TorchCheckpointError, applyEma, splitLdm, type TorchCheckpoint, type LoadTorchOptions } from './io/torch_ckpt';
export { Tensor, fromArray, sync, releaseMemory } from './tensor/tensor';
export { tidy, keep, dispose } from './tensor/scope';
export { backward, noGrad } from './tensor/autograd';
export { Generator } from './tensor/random';
export { native } from './tensor/native';
export * as ops from './tensor/ops';
export * as nn from './nn';
export * as optim from './optim';
