// The models that ship in the package, by name: `--model NAME` on the command
// line instead of --ckpt (and --base). Paths are under the package root, so a
// name works from any working directory.
import fs from 'node:fs';
import path from 'node:path';

import { packageRoot } from '../tensor/native';

export interface ShippedModel {
  /** What it is, one line (for --help and errors). */
  description: string;
  /** Weights, relative to the package root. */
  ckpt: string;
  /** Config, relative to the package root; absent when the weights carry their config in their metadata. */
  config?: string;
}

export const SHIPPED_MODELS: Readonly<Record<string, ShippedModel>> = Object.freeze({
  'fmnist-small': { description: 'pixel-space DDPM UNet, Fashion-MNIST 32x32, class-conditional', ckpt: 'models/fmnist-small.safetensors' },
  'fmnist-ldm': {
    description: 'class-conditional latent diffusion, Fashion-MNIST 32x32 (KL-f4 first stage, 8x8x4 latents; classes 0-9, 10 = no class)',
    ckpt: 'models/fmnist-ldm.safetensors',
    config: 'configs/fmnist-ldm.yaml',
  },
});

export class UnknownModelError extends Error {
  constructor(readonly modelName: string) {
    super(`unknown model '${modelName}'; shipped models: ${Object.keys(SHIPPED_MODELS).join(', ')}`);
    this.name = 'UnknownModelError';
  }
}

/** A shipped model's absolute checkpoint and config paths; an error for an unknown name or a missing file. */
export function resolveShippedModel(name: string, root: string = packageRoot): { ckpt: string; config?: string } {
  const m = Object.prototype.hasOwnProperty.call(SHIPPED_MODELS, name) ? SHIPPED_MODELS[name] : undefined;
  if (!m) throw new UnknownModelError(name);
  const ckpt = path.join(root, m.ckpt);
  const config = m.config ? path.join(root, m.config) : undefined;
  for (const f of [ckpt, config]) if (f && !fs.existsSync(f)) throw new Error(`model '${name}': ${f} is missing from the package`);
  return config ? { ckpt, config } : { ckpt };
}
