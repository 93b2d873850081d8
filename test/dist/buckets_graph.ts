// A small graph for the gradient-bucket tests (test/dist/buckets.test.ts and
// the ranks of buckets_rank.ts): three parameters, the last registered (w3,
// bucket 0) used twice, once near the loss and once near the input, so the
// backward pass adds to its gradient first and last: a bucket started at the
// first addition would miss the second.
import { add, matmul, mean, mul, tanh } from '../../src/tensor/ops';
import { fromArray, type Tensor } from '../../src/tensor/tensor';

/** w1 (4, h), w2 (h, h), w3 (h): registration order. */
export function makeParams(seed = 1, h = 6): Tensor[] {
  let s = seed;
  const rnd = (n: number) => Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5));
  const ps = [fromArray(rnd(4 * h), [4, h]), fromArray(rnd(h * h), [h, h]), fromArray(rnd(h), [h])];
  for (const p of ps) p.requiresGrad = true;
  return ps;
}

/** (n, 4) inputs that differ with `salt` (each rank's own data). */
export function makeInput(n: number, salt: number): Tensor {
  return fromArray(Float32Array.from({ length: n * 4 }, (_, i) => Math.sin(i * 0.7 + salt * 1.3)), [n, 4]);
}

export function lossOf(params: readonly Tensor[], x: Tensor): Tensor {
  const [w1, w2, w3] = params;
  const h = tanh(add(matmul(x, w1), w3)); // w3's use near the input: its last gradient
  const y = matmul(h, w2);
  return mean(mul(add(y, w3), y)); // w3's use near the loss: its first gradient
}

export function zeroGrads(params: readonly Tensor[]): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}
