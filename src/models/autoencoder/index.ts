// The first-stage autoencoders of latent diffusion (CompVis layout and keys).
export * from './model';
export * from './kl';
export * from './vq';
export * from './config';
export * from './checkpoint';
