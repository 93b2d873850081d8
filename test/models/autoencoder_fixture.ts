// The committed fixtures of the autoencoder parity tests
// (test/fixtures/autoencoder, made by test/reference/autoencoder_ref.py):
// inputs and PyTorch outputs, and the weights rebuilt here bit for bit from
// the same splitmix64 hash the generator used (hash64 of src/tensor/random.ts).
import path from 'node:path';

import { readSafetensors } from '../../src/io/safetensors';
import { hash64 } from '../../src/tensor/random';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import type { DDConfig } from '../../src/models/autoencoder';

export const FIXTURE_DIR = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'autoencoder');

export interface FixtureConfig {
  kind: 'kl' | 'vq';
  ddconfig: DDConfig;
  embed_dim: number;
  n_embed?: number;
  kl_weight?: number;
  logvar_init?: number;
  seed: number;
}

export interface Fixture {
  config: FixtureConfig;
  /** Upstream's state-dict keys and shapes, in upstream's order. */
  manifest: [string, number[]][];
  io: Map<string, Tensor>;
  weights: Map<string, Tensor>;
}

/** The generator's rule (hashed_value in autoencoder_ref.py), in float64 then rounded to float32. */
export function hashedValue(name: string, shape: number[], u: number): number {
  if (name.endsWith('weight') && shape.length > 1) {
    const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
    return (2.0 * u - 1.0) * Math.sqrt(3.0 / fanIn);
  }
  if (name.includes('norm') && name.endsWith('weight')) return 1.0 + (2.0 * u - 1.0) * 0.2;
  return (2.0 * u - 1.0) * 0.2;
}

/**
 * The weights of a manifest ([key, shape], in state-dict order) rebuilt by
 * autoencoder_ref.py's hashed_fill rule: element i of the whole run is
 * hashedValue(key, shape, hash64(seed, i)).
 */
export function hashedWeights(manifest: [string, number[]][], seed: number): Map<string, Tensor> {
  const weights = new Map<string, Tensor>();
  let at = 0;
  for (const [key, shape] of manifest) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; ++i) data[i] = hashedValue(key, shape, hash64(seed, at + i));
    at += n;
    weights.set(key, fromArray(data, shape));
  }
  return weights;
}

/** Just the tensors of a fixture file (the quantizer's has no model). */
export async function loadIo(name: string): Promise<Map<string, Tensor>> {
  return (await readSafetensors(path.join(FIXTURE_DIR, `${name}.io.safetensors`))).tensors;
}

export async function loadFixture(name: string): Promise<Fixture> {
  const { tensors: io, metadata } = await readSafetensors(path.join(FIXTURE_DIR, `${name}.io.safetensors`));
  const config = JSON.parse(metadata.config) as FixtureConfig;
  const manifest = JSON.parse(metadata.weights) as [string, number[]][];
  const weights = hashedWeights(manifest, config.seed);
  // The VQ codebook is fitted to the latents, so stored rather than hashed.
  const hashedCodebook = weights.get('quantize.embedding.weight');
  if (hashedCodebook) {
    hashedCodebook.dispose();
    weights.set('quantize.embedding.weight', io.get('codebook')!);
  }
  return { config, manifest, io, weights };
}
