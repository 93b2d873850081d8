// Loading upstream first-stage checkpoints: their state dicts hold the
// training loss's tensors too (loss.logvar, loss.discriminator.*,
// loss.perceptual_loss.* for LPIPS) and, with use_ema, model_ema.*.
import type { LoadStateDictResult, Module } from '../../nn/module';
import type { Tensor } from '../../tensor/tensor';
import type { AutoencoderKLLoss } from './kl';

export interface FirstStageLoadResult extends LoadStateDictResult {
  /** Keys of the checkpoint that belong to no module given (discriminator, LPIPS, EMA...). */
  ignoredKeys: string[];
}

/**
 * Loads the model's keys strictly (every one must be there, with its shape);
 * `loss.logvar` goes into `loss` when given; every other `loss.*` and
 * `model_ema.*` key is skipped and listed in ignoredKeys. Any other key that
 * the model lacks is an error, as with loadStateDict.
 */
export function loadFirstStageStateDict(
  model: Module,
  dict: Map<string, Tensor>,
  opts: { loss?: AutoencoderKLLoss } = {},
): FirstStageLoadResult {
  const own = new Map<string, Tensor>();
  const ignoredKeys: string[] = [];
  let logvar: Tensor | undefined;
  for (const [k, t] of dict) {
    if (k === 'loss.logvar' && opts.loss) logvar = t;
    else if (k.startsWith('loss.') || k.startsWith('model_ema.')) ignoredKeys.push(k);
    else own.set(k, t);
  }
  const r = model.loadStateDict(own, { strict: true });
  if (opts.loss) {
    if (!logvar) throw new RangeError('loadFirstStageStateDict: a loss was given but the checkpoint has no loss.logvar');
    opts.loss.loadStateDict(new Map([['logvar', logvar]]), { strict: true });
  }
  return { ...r, ignoredKeys };
}
