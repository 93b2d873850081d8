// Whether Fashion-MNIST (the Debian package dataset-fashion-mnist, or the
// folder in TDQ_FASHION_MNIST_DIR) can be read, for tests that need it.
import { defaultFashionMnistDir, findMnistFiles } from '../../src/data/fashion_mnist';

let probe: string | null | undefined;

/**
 * null when the Fashion-MNIST idx files are there, else why not. Tests skip
 * with this reason on a machine without the dataset; under CI=true the
 * dataset is required, so a test that needs it must fail, not skip: use
 * fmnistSkip() for the `skip` option.
 */
export function fmnistUnavailable(): string | null {
  if (probe !== undefined) return probe;
  try {
    const dir = defaultFashionMnistDir();
    findMnistFiles(dir, 'train');
    findMnistFiles(dir, 'test');
    probe = null;
  } catch (e) {
    probe = `Fashion-MNIST unavailable (${(e as Error).message.split('. ')[0]}); install it with: apt-get install dataset-fashion-mnist, or set TDQ_FASHION_MNIST_DIR`;
  }
  return probe;
}

/** The `skip` option of a test needing Fashion-MNIST: the reason when it is missing, false under CI=true (run and fail there). */
export function fmnistSkip(): string | false {
  const why = fmnistUnavailable();
  return why && !process.env.CI ? why : false;
}
