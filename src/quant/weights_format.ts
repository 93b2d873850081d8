// How a quantized checkpoint stores the weights of its quantized layers.
//
// 'float' (files from before this format, and on request): the float32
// weights as trained; the weight quantizer rounds them onto its grid on every
// forward (fake) or when packing for the integer kernels.
//
// 'int' (metadata quant_weights = 'int'): the levels themselves, per layer
//   <layer>.weight_int8   int8 of the weight's shape          (weights of 5 to 8 bits)
//   <layer>.weight_int4   uint8 [ceil(n / 2)], two per byte    (weights of 2 to 4 bits;
//                         element 2i in the low nibble, packInt4's layout)
// with level = clamp(round(w / step), -2^(b-1), 2^(b-1) - 1) for the layer's
// per-output-channel steps <layer>.weight_quant.step (stored as before, as
// every other tensor: biases, full-precision layers, quantizer state, TDQ
// tables). The real weight is level * step, which is bit for bit what fake
// quantization makes of the float weight (the levels are the same, the
// product the same float32 multiply), so fake and integer execution give the
// same outputs from either format. An 'int' file holds one set of weights:
// the EMA's when the source had one (the weights sampling uses); it has no
// ema.* tensors and is not a training checkpoint (the float residual of each
// weight, which training updates, is gone).
import { writeSafetensors } from '../io/safetensors';
import { StateDictError } from '../nn/module';
import { noGrad } from '../tensor/autograd';
import { clamp } from '../tensor/ops/elementwise';
import { packInt4, quantizeActivation } from '../tensor/ops/qlinear';
import { type Tensor, runOp1 } from '../tensor/tensor';
import { CHECKPOINT_FORMAT, saveCheckpoint } from '../train/checkpoint';
import type { QuantizedModel } from './quantize_model';
import { STEP_FLOOR } from './quantizer';

export type WeightsFormat = 'int' | 'float';
export const WEIGHTS_FORMATS: readonly WeightsFormat[] = ['int', 'float'];

/** The metadata key naming the format ('float' when absent). */
export const WEIGHTS_FORMAT_KEY = 'quant_weights';

/** The weights format of a quantized checkpoint's metadata. */
export function weightsFormatOf(metadata: Record<string, string>): WeightsFormat {
  const v = metadata[WEIGHTS_FORMAT_KEY];
  if (v === undefined || v === 'float') return 'float';
  if (v === 'int') return 'int';
  throw new RangeError(`metadata '${WEIGHTS_FORMAT_KEY}' must be 'int' or 'float', got ${JSON.stringify(v)}`);
}

/** Whether weights of this many bits are stored as int4 (two per byte) rather than int8. */
export function storedAsInt4(bits: number): boolean {
  return bits <= 4;
}

/** The key of a quantized layer's integer weights in an 'int' checkpoint. */
export function intWeightKey(layer: string, bits: number): string {
  return `${layer}.weight_${storedAsInt4(bits) ? 'int4' : 'int8'}`;
}

/**
 * The levels of a quantized layer's weights as stored: int8 of the weight's
 * shape, or int4 packed (bits <= 4); owned: whether the tensor is new (the
 * caller disposes it) or the layer's own integer weights.
 */
function storedLevels(qm: QuantizedModel, name: string): { t: Tensor; owned: boolean } {
  const l = qm.layers.get(name)!;
  const bits = l.weightQuant.bits;
  if (l.hasIntWeights) {
    const own = l.intSourceTensor()!;
    // The layer keeps its levels in the stored layout (setIntWeights checks it).
    if ((own.dtype === 'uint8') === storedAsInt4(bits)) return { t: own, owned: false };
  }
  return noGrad(() => {
    let lv: Tensor;
    if (l.hasIntWeights) lv = l.intLevels();
    else {
      // Per output channel: quantize_act with one step per index of axis 0 (the rounding of fake_quant and qweight_pack).
      const s = clamp(l.weightQuant.step, STEP_FLOOR);
      lv = quantizeActivation(l.layer.weight, s, { bits, signed: true });
      s.dispose();
    }
    if (!storedAsInt4(bits)) return { t: lv, owned: true };
    const p = packInt4(lv);
    lv.dispose();
    return { t: p, owned: true };
  });
}

/**
 * The model's state dict in the 'int' format: each quantized layer's
 * '<layer>.weight' replaced by its levels. Returns the map and the tensors it
 * made (dispose them after writing); the others are the model's own.
 */
export function intStateDict(qm: QuantizedModel): { tensors: Map<string, Tensor>; made: Tensor[] } {
  const tensors = new Map<string, Tensor>();
  const made: Tensor[] = [];
  const weightKeys = new Map([...qm.layers].map(([n, l]) => [`${n}.weight`, [n, l.weightQuant.bits] as const]));
  try {
    for (const [k, t] of qm.stateDict()) {
      const q = weightKeys.get(k);
      if (!q) {
        tensors.set(k, t);
        continue;
      }
      const lv = storedLevels(qm, q[0]);
      if (lv.owned) made.push(lv.t);
      tensors.set(intWeightKey(q[0], q[1]), lv.t);
    }
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
  return { tensors, made };
}

/**
 * Loads an 'int' state dict: every tensor as QuantizedModel.loadStateDict
 * does (strict), except that each quantized layer's weights come as its
 * levels (intWeightKey), which the layer keeps instead of float weights.
 * The caller keeps ownership of the dict (the levels are copied).
 */
export function loadIntStateDict(qm: QuantizedModel, dict: Map<string, Tensor>): void {
  const rest = new Map(dict);
  const ints = new Map<string, Tensor>();
  const missing: string[] = [], unexpected: string[] = [];
  for (const [n, l] of qm.layers) {
    const key = intWeightKey(n, l.weightQuant.bits);
    const t = dict.get(key);
    if (!t) missing.push(key);
    else ints.set(n, t);
    rest.delete(key);
    if (rest.has(`${n}.weight`)) unexpected.push(`${n}.weight`);
  }
  const r = qm.loadStateDict(rest, { strict: false });
  const own = new Set([...qm.layers.keys()].map((n) => `${n}.weight`));
  missing.push(...r.missingKeys.filter((k) => !own.has(k)));
  unexpected.push(...r.unexpectedKeys);
  if (missing.length || unexpected.length) throw new StateDictError(qm.constructor.name, missing, unexpected, []);
  for (const [n, t] of ints) {
    const copy = runOp1('cast', [t], { dtype: t.dtype });
    try {
      const l = qm.layers.get(n)!;
      l.setIntWeights(copy, storedAsInt4(l.weightQuant.bits));
    } catch (e) {
      copy.dispose();
      throw e;
    }
  }
}

export interface SaveQuantizedOptions {
  config: unknown;
  model: QuantizedModel;
  /** Beside the model's own (quant, quant_timesteps) and the format. */
  extraMetadata?: Record<string, string>;
  weightsFormat: WeightsFormat;
}

/**
 * Writes a quantized model as a checkpoint that loadModel reads ('int': the
 * weights as levels; 'float': float32 weights, materialized from levels where
 * the model holds them). The model's current weights are written (swap an
 * EMA in first); no optimizer or EMA state.
 */
export async function saveQuantizedCheckpoint(file: string, o: SaveQuantizedOptions): Promise<void> {
  if (!WEIGHTS_FORMATS.includes(o.weightsFormat)) throw new RangeError(`weights format must be 'int' or 'float', got ${JSON.stringify(o.weightsFormat)}`);
  const metadata = { ...(o.extraMetadata ?? {}), ...o.model.checkpointMetadata(), [WEIGHTS_FORMAT_KEY]: o.weightsFormat };
  if (o.weightsFormat === 'float') {
    o.model.materializeFloatWeights();
    await saveCheckpoint(file, { config: o.config, model: o.model, extraMetadata: metadata });
    return;
  }
  const { tensors, made } = intStateDict(o.model);
  try {
    const prefixed = new Map([...tensors].map(([k, t]) => [`model.${k}`, t]));
    await writeSafetensors(file, prefixed, { format: CHECKPOINT_FORMAT, config: JSON.stringify(o.config), ...metadata });
  } finally {
    for (const t of made) t.dispose();
  }
}
