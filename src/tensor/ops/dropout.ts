// Inverted dropout on the native Philox stream: the mask of element i is a
// function of (gen.seed, offset + i), so a run is reproducible from the
// generator's state and the backward pass recomputes the mask instead of
// keeping it.
import { record } from '../autograd';
import { Generator } from '../random';
import { type Tensor, runOp1 } from '../tensor';

/**
 * Zeroes each element with probability p and scales the rest by 1 / (1 - p),
 * as torch.nn.functional.dropout. Draws x.size numbers from gen (advancing its
 * offset). When not training, or when p = 0, returns x itself and draws nothing.
 */
export function dropout(x: Tensor, p: number, gen: Generator, training: boolean): Tensor {
  if (typeof p !== 'number' || !(p >= 0 && p <= 1)) throw new RangeError(`dropout: argument 'p' must be in [0, 1], got ${p}`);
  if (!(gen instanceof Generator)) throw new TypeError('dropout: argument \'gen\' must be a Generator');
  if (!training || p === 0) return x;
  const attrs = { p, seed: gen.seed, offset: gen.offset };
  const out = runOp1('dropout', [x], attrs);
  gen.nextOffset(x.size); // only once the op is accepted
  return record(out, 'dropout', [x], (g) => [runOp1('dropout_backward', [g], attrs)]);
}
