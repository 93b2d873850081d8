// Writes a safetensors checkpoint with its float32 tensors as float16 (0-d
// tensors such as an LDM's scale_factor stay float32), same keys, same
// metadata plus `dtype`: how models/fmnist-ldm.safetensors was made from the
// run's model.safetensors (the loaders convert float16 to float32).
//
//   node dist/bench/fmnist_ldm/to_half.js IN.safetensors OUT.safetensors
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { type Tensor, runOp1 } from '../../src/tensor/tensor';

async function main(): Promise<void> {
  const [inFile, outFile] = process.argv.slice(2);
  if (!inFile || !outFile) throw new Error('usage: to_half.js IN.safetensors OUT.safetensors');
  const { tensors, metadata } = await readSafetensors(inFile);
  const out: [string, Tensor][] = [...tensors].map(([k, t]) => [k, t.dtype === 'float32' && t.ndim > 0 ? runOp1('cast', [t], { dtype: 'float16' }) : t]);
  await writeSafetensors(outFile, out, { ...metadata, dtype: 'float16 (from float32)' });
  console.log(`wrote ${outFile}: ${out.length} tensors`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
