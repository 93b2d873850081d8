// Whether the CUDA tests can run here. No GPU is a skip with its reason, also
// under CI=true (CI machines have no GPU, and none can be installed from
// Debian packages); TDQ_REQUIRE_GPU=1 (scripts/gpu-bench.sh on a GPU
// machine) makes it a failure instead, so a broken device cannot pass as a skip.
import { probeCuda } from '../../src/tensor/device';

/** The `skip` option of a test that needs a working CUDA device: the reason when there is none, else false. */
export function cudaSkip(): string | false {
  const p = probeCuda();
  if (p.available) return false;
  const why = `no usable CUDA device: ${p.reason}`;
  if (process.env.TDQ_REQUIRE_GPU === '1') throw new Error(`TDQ_REQUIRE_GPU=1 but ${why}`);
  return why;
}
