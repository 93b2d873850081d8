// The one place a checkpoint file's bytes become tensors, chosen by file
// extension: safetensors today; PyTorch pickles (.ckpt, .pt, .pth) go to the
// torch checkpoint reader (src/io/torch_ckpt/) once it exists.
import path from 'node:path';

import { readSafetensors } from './safetensors';
import type { Tensor } from '../tensor/tensor';

/** The file is of a kind this build cannot read. */
export class CheckpointFormatError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'CheckpointFormatError';
  }
}

export const TORCH_EXTENSIONS: readonly string[] = ['.ckpt', '.pt', '.pth'];

/** Every tensor of a checkpoint file and its string metadata; the caller owns the tensors. */
export async function readTensorFile(file: string): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  const ext = path.extname(file).toLowerCase();
  if (TORCH_EXTENSIONS.includes(ext))
    throw new CheckpointFormatError(file, `reading PyTorch ${ext} needs the torch checkpoint reader (src/io/torch_ckpt), which this build does not have yet; convert the file to .safetensors`);
  const { tensors, metadata } = await readSafetensors(file);
  return { tensors, metadata: metadata ?? {} };
}
