// Model surgery: every conv and linear layer of a UNet gets a quantized
// forward (quant_layers.ts) except those kept in full precision, and the
// whole is wrapped in a QuantizedModel that knows the batch's timesteps, which
// TDQ quantizers need.
import type { Denoiser } from '../models/diffusion';
import { noGrad } from '../tensor/autograd';
import { Module, type LoadStateDictOptions, type LoadStateDictResult } from '../nn/module';
import { Generator } from '../tensor/random';
import { keep, tidy } from '../tensor/scope';
import { type Device, type Tensor, fromArray, runOp } from '../tensor/tensor';
import { type QuantConfig, quantConfigFromJSON, quantConfigToJSON, resolveQuantConfig } from './config';
import { ActQuantizer, QuantContext, WeightQuantizer } from './quantizer';
import { type FloatLayer, type QuantLayer, isQuantizableLayer, quantLayerFor, quantLayerOf } from './quant_layers';
import { StepTable } from './table';
import { loadIntStateDict, weightsFormatOf } from './weights_format';


/**
 * The paper's full-precision layers: the timestep-embedding MLP and each
 * ResBlock's projection of it (functions of t only: precomputed per timestep
 * at inference, as the authors' code notes), the first conv (image in) and
 * the last conv (noise out). Names for UNetModel (openaimodel) and, second,
 * for the DDPM port; 'paper' uses those that exist in the model.
 */
export const PAPER_KEEP_FP: readonly string[] = [
  'time_embed.0', 'time_embed.2', '*.emb_layers.1', 'input_blocks.0.0', 'out.2',
  'temb.dense.0', 'temb.dense.1', '*.temb_proj', 'conv_in', 'conv_out',
];

/**
 * Layers whose outputs feed the attention matmuls (q, k, v), for
 * quantizeAttention: AttentionBlock's qkv, the autoencoders' attn q/k/v, and
 * the SpatialTransformer's CrossAttention to_q/to_k/to_v (attn1, attn2). The
 * transformer's other layers (proj_in, proj_out, to_out.0, ff.net.0.proj,
 * ff.net.2) are plain conv/linear layers, quantized like AttentionBlock's proj_out.
 */
export function isAttentionProjection(name: string): boolean {
  const last = name.slice(name.lastIndexOf('.') + 1);
  if (last === 'qkv') return true;
  if (last === 'q' || last === 'k' || last === 'v') return /attn/i.test(name);
  return (last === 'to_q' || last === 'to_k' || last === 'to_v') && /(^|\.)attn\d*\./.test(name);
}

function globToRegExp(pattern: string): RegExp {
  const esc = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${esc}$`);
}

/**
 * The layers kept in full precision, checked: each user-given name or pattern
 * must match at least one quantizable layer.
 */
export function resolveKeepFp(keepFp: QuantConfig['keepFp'], layerNames: readonly string[]): Set<string> {
  const patterns = keepFp === 'paper' ? PAPER_KEEP_FP : keepFp;
  const kept = new Set<string>();
  const unknown: string[] = [];
  for (const p of patterns) {
    const re = globToRegExp(p);
    const hits = layerNames.filter((n) => re.test(n));
    if (!hits.length && keepFp !== 'paper') unknown.push(p);
    for (const h of hits) kept.add(h);
  }
  if (unknown.length) {
    const shown = layerNames.slice(0, 12).join(', ') + (layerNames.length > 12 ? `, ... (${layerNames.length} in all)` : '');
    throw new RangeError(`quantizeModel: keepFp names ${unknown.map((u) => `'${u}'`).join(', ')} match no conv/linear layer of the model (layers: ${shown})`);
  }
  return kept;
}

export interface QuantizeOptions {
  /** T, the number of timesteps of the schedule (the TDQ table has T rows). */
  timesteps: number;
  /** Initialises the TDQ MLPs. */
  gen: Generator;
}

/** Keys of optional per-quantizer buffers, created on load when a checkpoint has them. */
const OPTIONAL_BUFFERS = ['step_table', 'calib_t', 'calib_min', 'calib_max', 'calib_step'] as const;
export type CalibBuffer = (typeof OPTIONAL_BUFFERS)[number];

/**
 * A UNet with quantized conv/linear layers. It is a Module whose children are
 * the UNet's own, so its state-dict keys are the float model's keys plus the
 * quantizers' (e.g. 'input_blocks.1.0.in_layers.2.act_quant.tdq.mlp.0.weight').
 */
export class QuantizedModel extends Module implements Denoiser {
  readonly config: QuantConfig;
  readonly timesteps: number;
  readonly ctx: QuantContext;
  /** Quantized layers by layer name, in model order. */
  readonly layers = new Map<string, QuantLayer>();
  /** Layers left in full precision. */
  readonly fpLayers: string[] = [];

  constructor(readonly model: Denoiser, cfg: QuantConfig, opts: QuantizeOptions) {
    super();
    this.config = resolveQuantConfig(cfg);
    if (!Number.isInteger(opts?.timesteps) || opts.timesteps < 1) throw new RangeError(`quantizeModel: timesteps must be a positive integer, got ${opts?.timesteps}`);
    if (!(opts.gen instanceof Generator)) throw new TypeError('quantizeModel: opts.gen must be a Generator');
    this.timesteps = opts.timesteps;
    this.ctx = new QuantContext(opts.timesteps, this.config.tdq.encDim, this.config.tdq.maxPeriod);

    const candidates = model.namedModules().filter(([, m]) => isQuantizableLayer(m)) as [string, FloatLayer][];
    for (const [name, m] of candidates) if (quantLayerOf(m)) throw new Error(`quantizeModel: layer '${name}' is already quantized`);
    const keep = resolveKeepFp(this.config.keepFp, candidates.map(([n]) => n));
    for (const [name, layer] of candidates) {
      if (keep.has(name)) {
        this.fpLayers.push(name);
        continue;
      }
      const { nBitA, nBitW } = this.config;
      const parts = {
        actQuant: new ActQuantizer(`${name}.act_quant`, nBitA, this.config, this.ctx, opts.gen),
        weightQuant: new WeightQuantizer(layer.weight.shape[0], nBitW, this.ctx),
        outQuant: this.config.quantizeAttention && isAttentionProjection(name)
          ? new ActQuantizer(`${name}.out_quant`, nBitA, this.config, this.ctx, opts.gen)
          : undefined,
      };
      this.layers.set(name, quantLayerFor(name, layer, parts));
    }
    // Share the UNet's tree under the same names (keys unchanged).
    for (const [n, c] of model.namedChildren()) this.registerModule(n, c);
    for (const [n, p] of model.namedParameters()) if (!n.includes('.')) this.registerParameter(n, p);
    for (const [n, b] of model.namedBuffers()) if (!n.includes('.')) this.registerBuffer(n, b);
  }

  /** Every activation quantizer (inputs, then attention outputs) with its key prefix, in model order. */
  actQuantizers(): ActQuantizer[] {
    const out: ActQuantizer[] = [];
    for (const l of this.layers.values()) {
      out.push(l.actQuant);
      if (l.outQuant) out.push(l.outQuant);
    }
    return out;
  }

  weightQuantizers(): [string, WeightQuantizer][] {
    return [...this.layers].map(([n, l]) => [`${n}.weight_quant`, l.weightQuant]);
  }

  /**
   * x (B, C, H, W), t (B) float32 model timesteps, y (B) class labels for a
   * class-conditional UNet, context (B, M, context_dim) for a cross-attention
   * UNet: UNetModel.forward's signature. The TDQ MLPs and
   * the step table both take t from the tensor itself, on the engine: t is
   * never read back to JavaScript.
   */
  forward(x: Tensor, t: Tensor, y?: Tensor, context?: Tensor): Tensor {
    if (t.shape.length !== 1 || t.shape[0] !== x.shape[0]) throw new RangeError(`QuantizedModel.forward: t must have shape [${x.shape[0]}], got [${t.shape.join(', ')}]`);
    this.ctx.begin(t);
    try {
      if (context !== undefined) return this.model.forward(x, t, y, context);
      return y === undefined ? this.model.forward(x, t) : this.model.forward(x, t, y);
    } finally {
      this.ctx.end();
    }
  }

  /** How quantized layers compute: 'fake' (float ops on fake-quantized tensors) or 'int' (integer kernels). */
  get exec(): 'fake' | 'int' {
    return this.ctx.exec;
  }

  /**
   * Layers that cannot run in integer arithmetic, with the reason ({} when
   * every quantized layer can). Full-precision layers (fpLayers) stay float
   * in both modes and are not listed; attention matmuls stay float.
   */
  intUnsupportedLayers(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [n, l] of this.layers) {
      const why = l.intUnsupported();
      if (why !== null) out[n] = why;
    }
    return out;
  }

  /**
   * 'int': quantized layers run qconv2d / qlinear on float x (quantized inside the op) with weights
   * packed once (inference only: the model must be in eval mode, and training
   * it needs setExec('fake') first); 'fake': the fake-quantized float path.
   * Switching frees the packed weights, so weights changed in between are
   * repacked. Output of 'int' equals 'fake' up to float rounding.
   */
  setExec(exec: 'fake' | 'int'): void {
    if (exec !== 'fake' && exec !== 'int') throw new RangeError(`QuantizedModel.setExec: exec must be 'fake' or 'int', got ${JSON.stringify(exec)}`);
    if (exec === 'int' && this.training) throw new Error("QuantizedModel.setExec('int'): integer execution is inference only; call eval() first");
    this.invalidateIntCache();
    this.ctx.exec = exec;
  }

  /** Frees every layer's packed integer weights (they are rebuilt on the next integer forward). */
  invalidateIntCache(): void {
    for (const l of this.layers.values()) l.invalidateIntCache();
  }

  /**
   * Brings back the float weights of layers loaded with integer weights
   * (dequantized: level * step), e.g. before saving in the float format or
   * training. Layers with float weights are unchanged.
   */
  materializeFloatWeights(): void {
    for (const l of this.layers.values()) l.materializeFloatWeight();
  }

  /**
   * Bytes of weights held, by kind: float32 weights of the quantized layers,
   * their integer levels (int8, or int4 two per byte), the integer kernels'
   * packed copies (built on first integer use), and the float parameters of
   * the rest of the model (full-precision layers, biases, norms, quantizers).
   */
  weightBytes(): { quantFloat: number; quantInt: number; quantPacked: number; other: number } {
    const out = { quantFloat: 0, quantInt: 0, quantPacked: 0, other: 0 };
    const counted = new Set<Tensor>();
    for (const l of this.layers.values()) {
      const b = l.weightBytes();
      out.quantFloat += b.float;
      out.quantInt += b.int;
      out.quantPacked += b.packed;
      counted.add(l.layer.weight);
    }
    for (const [, t] of this.namedParameters()) if (!counted.has(t)) out.other += t.nbytes;
    for (const [, t] of this.namedBuffers()) if (!counted.has(t)) out.other += t.nbytes;
    return out;
  }

  /** Fake-quantize (the default) or run the same model in full precision (for comparisons). */
  setQuantEnabled(on: boolean): void {
    this.ctx.mode = on ? 'quant' : 'fp';
  }

  override train(mode = true): this {
    if (mode && this.ctx.exec === 'int') throw new Error("QuantizedModel.train(): the model runs in integer execution, which is inference only; call setExec('fake') first");
    super.train(mode);
    this.model.train(mode);
    return this;
  }

  /** Quantizer steps, PACT bounds and TDQ MLP weights: the group with its own learning rate. */
  quantParameters(): [string, Tensor][] {
    return this.namedParameters().filter(([n]) => isQuantKey(n));
  }

  /** The float model's own parameters (weights and biases). */
  floatParameters(): [string, Tensor][] {
    return this.namedParameters().filter(([n]) => !isQuantKey(n));
  }

  get hasTable(): boolean {
    return this.actQuantizers().every((q) => q.kind !== 'tdq' || q.table !== null);
  }

  /**
   * Evaluates every TDQ module at t = 0 .. T-1 (eval mode, no dropout) and
   * stores the steps as each quantizer's 'step_table' (T). Blocks until the
   * values are read. Static quantizers need no table.
   */
  buildTable(): void {
    const T = this.timesteps;
    const ts = Float64Array.from({ length: T }, (_, i) => i);
    for (const q of this.actQuantizers()) {
      if (q.kind !== 'tdq') continue;
      const wasTraining = q.tdq!.training;
      q.tdq!.eval();
      const steps = noGrad(() => tidy(() => q.tdq!.forward(q.tdq!.encode(ts))));
      q.tdq!.train(wasTraining);
      const values = steps.dataSync() as Float32Array;
      steps.dispose();
      q.table = new StepTable(Float32Array.from(values));
      setOptionalBuffer(q, 'step_table', q.table.values);
    }
    this.installTable();
  }

  /**
   * Joins the quantizers' tables into the engine's (T, Q) table that forward
   * looks steps up in (column q: the q-th TDQ quantizer). Without every TDQ
   * quantizer's table there is no engine table.
   */
  private installTable(): void {
    const tdq = this.actQuantizers().filter((q) => q.kind === 'tdq');
    if (!tdq.length || tdq.some((q) => q.table === null)) {
      this.ctx.setTable(null);
      return;
    }
    const T = this.timesteps, Q = tdq.length;
    const data = new Float32Array(T * Q);
    tdq.forEach((q, c) => {
      const v = q.table!.values;
      for (let k = 0; k < T; ++k) data[k * Q + c] = v[k];
    });
    this.ctx.setTable(fromArray(data, [T, Q], 'float32', this.device()), new Map(tdq.map((q, c) => [q, c])));
  }

  /** Moves parameters, buffers and the TDQ step table; integer weights are rebuilt on the new device when next used. */
  override to(device: Device): this {
    this.invalidateIntCache();
    super.to(device);
    this.ctx.tableTo(device);
    return this;
  }

  override dispose(): void {
    this.invalidateIntCache();
    for (const l of this.layers.values()) l.releaseIntWeights();
    this.ctx.setTable(null);
    super.dispose();
  }

  /** Sampling reads step sizes from the table (true) or runs the TDQ MLPs (false, the default). */
  useTable(on: boolean): void {
    if (on && !this.hasTable) throw new Error('QuantizedModel.useTable(true): the TDQ table has not been built (call buildTable()) or loaded');
    this.ctx.useTable = on;
  }

  /**
   * Loads float weights and quantizer state. Optional buffers in the dict
   * (TDQ tables, calibration statistics) are created first, and the JS-side
   * copies (ranges, tables) are refreshed after the copy (blocking reads).
   */
  override loadStateDict(dict: Map<string, Tensor>, opts: LoadStateDictOptions = {}): LoadStateDictResult {
    // Float weights given for a layer that holds integer ones: the float weights become the layer's again.
    for (const [n, l] of this.layers) if (l.hasIntWeights && dict.has(`${n}.weight`)) l.materializeFloatWeight();
    const byName = new Map(this.actQuantizers().map((q) => [q.name, q]));
    for (const key of dict.keys()) {
      const dot = key.lastIndexOf('.');
      const q = byName.get(key.slice(0, dot));
      const buf = key.slice(dot + 1) as CalibBuffer;
      if (q && OPTIONAL_BUFFERS.includes(buf) && !q.namedBuffers().some(([n]) => n === buf)) {
        const src = dict.get(key)!;
        q.registerBuffer(buf, keep(fromArray(new Float32Array(src.size), src.shape)));
      }
    }
    const r = super.loadStateDict(dict, opts);
    this.invalidateIntCache();
    for (const q of this.actQuantizers()) {
      q.syncRangeFromBuffers();
      const tbl = q.namedBuffers().find(([n]) => n === 'step_table');
      if (tbl) {
        if (tbl[1].shape.length !== 1 || tbl[1].shape[0] !== this.timesteps)
          throw new RangeError(`${q.name}.step_table has shape [${tbl[1].shape.join(', ')}], expected [${this.timesteps}] (T of this model)`);
        q.table = new StepTable(Float32Array.from(tbl[1].dataSync() as Float32Array));
      }
    }
    this.installTable();
    return r;
  }

  /** Metadata to store beside the state dict in a checkpoint. */
  checkpointMetadata(): Record<string, string> {
    return { quant: quantConfigToJSON(this.config), quant_timesteps: String(this.timesteps) };
  }
}

/** Keys of quantizer state (steps, PACT bounds, TDQ MLPs, tables, statistics). */
export function isQuantKey(key: string): boolean {
  return /(^|\.)(act_quant|weight_quant|out_quant)\./.test(key);
}

/** Creates or overwrites a per-quantizer optional buffer (T or K values). */
export function setOptionalBuffer(q: ActQuantizer, name: CalibBuffer, values: ArrayLike<number>): void {
  const existing = q.namedBuffers().find(([n]) => n === name)?.[1];
  const src = fromArray(Float32Array.from(values), [values.length]);
  if (existing && existing.shape[0] === values.length) {
    runOp('copy_', [existing, src]);
    src.dispose();
  } else if (existing) {
    throw new RangeError(`${q.name}.${name}: has ${existing.shape[0]} values, got ${values.length}`);
  } else {
    q.registerBuffer(name, src);
  }
}

/**
 * Quantizes a float UNet in place (its layers get quantized forwards) and
 * returns the wrapper. Quantizers start uninitialised (LSQ step 0.1, TDQ output
 * ~0.1): run calibrate() or load a quantized checkpoint before use.
 */
export function quantizeModel(model: Denoiser, cfg: QuantConfig, opts: QuantizeOptions): QuantizedModel {
  if (!(model instanceof Module) || typeof (model as { forward?: unknown }).forward !== 'function')
    throw new TypeError('quantizeModel: model must be a Module with forward(x, t, y?)');
  return new QuantizedModel(model, cfg, opts);
}

/** Whether checkpoint metadata marks a quantized model. */
export function isQuantizedCheckpoint(metadata: Record<string, string>): boolean {
  return typeof metadata.quant === 'string';
}

/**
 * A quantized model ready to sample, from a checkpoint's parts: the float
 * UNet built from the checkpoint's config (its weights are overwritten), the
 * metadata ('quant', 'quant_timesteps'), the model state dict and, when
 * given, the EMA. The EMA holds parameters only, so it is laid over the
 * model's state (ranges, tables and statistics are buffers). With useTable
 * (the default) the TDQ table is rebuilt from the weights in use unless the
 * checkpoint's table was made from them (no EMA given), and sampling reads it.
 * The caller keeps ownership of the dicts.
 */
export function loadQuantized(
  unet: Denoiser,
  metadata: Record<string, string>,
  model: Map<string, Tensor>,
  ema?: Map<string, Tensor> | null,
  opts: { useTable?: boolean } = {},
): QuantizedModel {
  if (!isQuantizedCheckpoint(metadata)) throw new TypeError("loadQuantized: the checkpoint has no 'quant' metadata (it is not quantized)");
  const cfg = quantConfigFromJSON(metadata.quant);
  const T = Number(metadata.quant_timesteps);
  if (!Number.isInteger(T) || T < 1) throw new RangeError(`loadQuantized: metadata 'quant_timesteps' must be a positive integer, got ${JSON.stringify(metadata.quant_timesteps)}`);
  const format = weightsFormatOf(metadata);
  const qm = quantizeModel(unet, cfg, { timesteps: T, gen: new Generator(0) });
  try {
    if (format === 'int') {
      // Integer weights (weights_format.ts): every other tensor as in a float-format file, no EMA.
      if (ema) throw new RangeError("loadQuantized: a checkpoint with 'int' weights holds the weights it samples with; it has no EMA (ema.* tensors)");
      loadIntStateDict(qm, model);
    } else {
      qm.loadStateDict(model);
      if (ema) qm.loadStateDict(ema, { strict: false });
    }
    qm.eval();
    if (cfg.useDynamic && (opts.useTable ?? true)) {
      if (ema || !qm.hasTable) qm.buildTable();
      qm.useTable(true);
    }
  } catch (e) {
    qm.dispose();
    throw e;
  }
  return qm;
}

/** What a caller asks for: 'auto' is 'int' where every quantized layer has an integer kernel, else 'fake'. */
export type ExecRequest = 'auto' | 'int' | 'fake';

/**
 * Sets a loaded (eval-mode) quantized model's execution: 'int' and 'fake' as
 * asked ('int' with layers that cannot run integer leaves those fake, and says
 * so in the note), 'auto' as described at ExecRequest. Returns the mode set
 * and a note for the user when the result is not plain integer execution.
 */
export function applyExec(qm: QuantizedModel, req: ExecRequest = 'auto'): { exec: 'int' | 'fake'; note: string | null } {
  if (req !== 'auto' && req !== 'int' && req !== 'fake') throw new RangeError(`exec must be 'auto', 'int' or 'fake', got ${JSON.stringify(req)}`);
  const bad = Object.entries(qm.intUnsupportedLayers());
  const list = bad.slice(0, 6).map(([n, why]) => `${n} (${why})`).join(', ') + (bad.length > 6 ? `, ... (${bad.length} in all)` : '');
  if (req === 'fake') {
    qm.setExec('fake');
    return { exec: 'fake', note: null };
  }
  if (req === 'auto' && bad.length) {
    qm.setExec('fake');
    return { exec: 'fake', note: `fake-quantized execution: ${bad.length} quantized layer(s) have no integer kernel: ${list}` };
  }
  qm.setExec('int');
  return { exec: 'int', note: bad.length ? `integer execution except ${bad.length} layer(s) run fake-quantized: ${list}` : null };
}
