// The one place a checkpoint file's bytes become tensors, chosen by file
// extension: PyTorch pickles (.ckpt, .pt, .pth) through the torch checkpoint
// reader (io/torch_ckpt: its state dict, Lightning's 'state_dict' when there
// is one; no metadata), everything else as safetensors.
import path from 'node:path';

import { readSafetensors } from './safetensors';
import { loadTorchCheckpoint } from './torch_ckpt';
import type { Tensor } from '../tensor/tensor';

export const TORCH_EXTENSIONS: readonly string[] = ['.ckpt', '.pt', '.pth'];

/** Every tensor of a checkpoint file and its string metadata; the caller owns the tensors. */
export async function readTensorFile(file: string): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  if (TORCH_EXTENSIONS.includes(path.extname(file).toLowerCase())) return { tensors: (await loadTorchCheckpoint(file)).tensors, metadata: {} };
  const { tensors, metadata } = await readSafetensors(file);
  return { tensors, metadata: metadata ?? {} };
}
