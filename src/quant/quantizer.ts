// The quantizers: per-output-channel LSQ for weights, and per-tensor
// activation quantizers whose step is either static (LSQ, PACT) or a function
// of the timestep (TDQ, tdq.ts). All fake-quantize through the native
// fake_quant op, whose forward is y = clamp(round(x / s), qmin, qmax) * s.
import { noGrad } from '../tensor/autograd';
import { add, addScalar, clamp, detach, relu, reshape, scale, sub } from '../tensor/ops/elementwise';
import { narrow } from '../tensor/ops/shape';
import { fakeQuantize, stepTableLookup } from '../tensor/ops/quant';
import { Module } from '../nn/module';
import { Generator } from '../tensor/random';
import { type Device, type Tensor, fromArray, runOp } from '../tensor/tensor';
import { type QuantConfig, levels } from './config';
import { TdqModule, encodeTimesteps } from './tdq';
import { timestepValues } from '../diffusion/samplers/common';
import { StepTable } from './table';

/**
 * The minimum of SiLU, x * sigmoid(x), at x = -1.27846: the lower bound of
 * every activation that comes straight out of a SiLU. Such inputs are
 * quantized unsigned with this fixed zero point, as the authors' code does,
 * instead of wasting the sign bit on [-0.28, 0).
 */
export const SILU_MIN = -0.2784645427610738;

/**
 * The smallest step a quantizer uses. Learned steps are plain parameters, and
 * an optimizer step of a fixed size (Adam's is about the learning rate) can
 * push a small one through zero; the fake-quant kernel then rejects it. Steps
 * are clamped to this floor in forward (no gradient below it), which leaves
 * every step in a sensible range untouched, bit for bit.
 */
export const STEP_FLOOR = 1e-8;

/** How an activation quantizer maps its input range onto the integer levels. */
export interface ActRange {
  /** Signed levels -2^(b-1)..2^(b-1)-1, or unsigned 0..2^b-1 after subtracting zeroPoint. */
  signed: boolean;
  /** Subtracted before and added after quantization (0, or SILU_MIN for SiLU outputs). */
  zeroPoint: number;
}

/** The range rule ("signed or unsigned by the sign of the data"): from the smallest calibration value. */
export function rangeForMin(min: number): ActRange {
  if (min >= 0) return { signed: false, zeroPoint: 0 };
  // A tiny tolerance: a float32 SiLU output can land an ulp below the exact minimum.
  if (min >= SILU_MIN * (1 + 1e-6)) return { signed: false, zeroPoint: SILU_MIN };
  return { signed: true, zeroPoint: 0 };
}

function setScalarBuffer(t: Tensor, values: number[]): void {
  const src = fromArray(values, t.shape, 'float32', t.device);
  runOp('copy_', [t, src]);
  src.dispose();
}

/**
 * What the activation quantizers of one model share during a forward: the
 * timesteps of the batch, the mode, and the lazily built encoding of t (one
 * per forward, shared by every TDQ module).
 */
export class QuantContext {
  /** 'quant': fake-quantize; 'fp': pass through (full precision); 'observe': pass through and report inputs. */
  mode: 'quant' | 'fp' | 'observe' = 'quant';
  /**
   * How quantized layers compute in 'quant' mode: 'fake' (float ops on
   * fake-quantized tensors) or 'int' (integer kernels, quant_layers.ts;
   * inference only). Set through QuantizedModel.setExec().
   */
  exec: 'fake' | 'int' = 'fake';
  /** Use the precomputed step tables of the TDQ quantizers (never runs the MLPs). */
  useTable = false;
  /** Called with each activation quantizer's input in 'observe' mode. */
  observer: ((q: ActQuantizer, x: Tensor, tValues: Float64Array) => void) | null = null;
  private t: Tensor | null = null;
  private tValues_: Float64Array | null = null;
  private enc: Tensor | null = null;
  /** The TDQ step table on the engine, (T, Q), and each TDQ quantizer's column in it. */
  private table: Tensor | null = null;
  private readonly columns = new Map<ActQuantizer, number>();
  /** This forward's rows of the table, (B, Q): one lookup shared by every quantizer. */
  private steps: Tensor | null = null;

  constructor(readonly timesteps: number, readonly encDim: number, readonly maxPeriod: number) {}

  /** Sets the timesteps of the batch about to run (cleared by end()). */
  begin(t: Tensor): void {
    this.t = t;
    this.tValues_ = null;
    this.enc = null;
    this.steps = null;
  }

  end(): void {
    this.t = null;
    this.tValues_ = null;
    this.enc = null; // owned by the caller's tidy scope, like every intermediate
    this.steps = null;
  }

  /**
   * Takes ownership of the (T, Q) step table and the quantizers' columns
   * (replacing and freeing the previous table); null frees it.
   */
  setTable(table: Tensor | null, columns: ReadonlyMap<ActQuantizer, number> = new Map()): void {
    if (table && (table.ndim !== 2 || table.shape[0] !== this.timesteps))
      throw new RangeError(`QuantContext.setTable: expected a (${this.timesteps}, Q) table, got [${table.shape.join(', ')}]`);
    this.table?.dispose();
    this.table = table;
    this.columns.clear();
    for (const [q, c] of columns) this.columns.set(q, c);
  }

  /** Moves the step table to `device` (QuantizedModel.to). */
  tableTo(device: Device): void {
    if (this.table && this.table.device !== device) this.table.adoptStorage(this.table.to(device));
  }

  get hasTable(): boolean {
    return this.table !== null;
  }

  /**
   * q's step sizes for this batch, (B), looked up on the engine from the t
   * tensor (native step_table_lookup): t is never read back to JS.
   */
  tableSteps(q: ActQuantizer): Tensor {
    const col = this.columns.get(q);
    if (!this.table || col === undefined) throw new Error(`${q.name}: useTable is on but the TDQ table has not been built or loaded (call buildTable())`);
    if (!this.steps) this.steps = stepTableLookup(this.table, this.tensor);
    const B = this.steps.shape[0];
    return reshape(narrow(this.steps, 1, col, 1), [B]);
  }

  /**
   * This forward's (B, Q) rows of the step table and q's column in them, for
   * the integer kernels, which read the step themselves (no per-layer
   * narrow / reshape / clamp); null when the table is not in use.
   */
  tableStepRows(q: ActQuantizer): { rows: Tensor; column: number } | null {
    if (!this.useTable) return null;
    const col = this.columns.get(q);
    if (!this.table || col === undefined) throw new Error(`${q.name}: useTable is on but the TDQ table has not been built or loaded (call buildTable())`);
    if (!this.steps) this.steps = stepTableLookup(this.table, this.tensor);
    return { rows: this.steps, column: col };
  }

  private get tensor(): Tensor {
    if (!this.t) throw new Error('TDQ quantizer: no timesteps for this forward (call the QuantizedModel, not the UNet)');
    return this.t;
  }

  /**
   * The timesteps' values on the JS side, for calibration's observers only:
   * known for the samplers' timestep tensors, else read back once with a
   * blocking read. Quantized inference never needs them (tableSteps()).
   */
  get tValues(): Float64Array {
    if (!this.tValues_) this.tValues_ = timestepValues(this.tensor);
    return this.tValues_;
  }

  /** The (B, encDim) encoding of this batch's timesteps, computed from t once per forward. */
  encoding(): Tensor {
    if (!this.enc) this.enc = encodeTimesteps(this.tensor, this.encDim, this.maxPeriod);
    return this.enc;
  }
}

/** Per-output-channel LSQ weight quantizer (signed levels). Key: 'weight_quant.step' (O). */
export class WeightQuantizer extends Module {
  readonly step: Tensor;

  constructor(readonly outChannels: number, readonly bits: number, private readonly ctx: QuantContext) {
    super();
    levels(bits, true); // validates nothing by itself; bits were checked in the config
    this.step = this.registerParameter('step', fromArray(new Float32Array(outChannels).fill(1e-2), [outChannels]));
  }

  get qmax(): number {
    return levels(this.bits, true).qmax;
  }

  forward(w: Tensor): Tensor {
    if (this.ctx.mode !== 'quant') return w;
    return fakeQuantize(w, clamp(this.step, STEP_FLOOR), { bits: this.bits, signed: true, granularity: 'channel', axis: 0 });
  }

  setSteps(steps: ArrayLike<number>): void {
    if (steps.length !== this.outChannels) throw new RangeError(`WeightQuantizer.setSteps: expected ${this.outChannels} steps, got ${steps.length}`);
    for (let i = 0; i < steps.length; ++i)
      if (!(steps[i] > 0) || !Number.isFinite(steps[i])) throw new RangeError(`WeightQuantizer.setSteps: step ${i} must be positive and finite, got ${steps[i]}`);
    setScalarBuffer(this.step, Array.from(steps));
  }
}

export type ActKind = 'lsq' | 'pact' | 'tdq';

/**
 * A per-tensor activation quantizer. Keys under it: 'signed' and 'zero_point'
 * (buffers, the range rule), then 'step' (LSQ), 'alpha' (PACT) or 'tdq.*'
 * (TDQ MLP), plus 'step_table' once the TDQ table is built and 'calib_*'
 * (per-timestep statistics) after calibration.
 */
export class ActQuantizer extends Module {
  readonly kind: ActKind;
  readonly step: Tensor | null = null;
  readonly alpha: Tensor | null = null;
  readonly tdq: TdqModule | null = null;
  readonly signedBuf: Tensor;
  readonly zeroPointBuf: Tensor;
  /** JS copies of the buffers (read on every forward without a sync). */
  range: ActRange = { signed: true, zeroPoint: 0 };
  /** The TDQ step table, once built or loaded. */
  table: StepTable | null = null;
  /**
   * Passes the input through unquantized while the model quantizes (not
   * stored): per-quantizer sensitivity analysis, one quantizer at a time.
   */
  bypass = false;

  constructor(
    /** The quantizer's key prefix in the state dict, e.g. 'input_blocks.1.0.in_layers.2.act_quant'. */
    readonly name: string,
    readonly bits: number,
    cfg: QuantConfig,
    readonly ctx: QuantContext,
    gen: Generator,
  ) {
    super();
    this.kind = cfg.useDynamic ? 'tdq' : cfg.staticMethod;
    this.gradScale = cfg.actGradScale === 'none' ? 1 : undefined;
    this.signedBuf = this.registerBuffer('signed', fromArray([1], [1]));
    this.zeroPointBuf = this.registerBuffer('zero_point', fromArray([0], [1]));
    if (this.kind === 'lsq') this.step = this.registerParameter('step', fromArray([0.1], [1]));
    else if (this.kind === 'pact') this.alpha = this.registerParameter('alpha', fromArray([0.1 * this.qmax], [1]));
    else {
      this.tdq = this.registerModule('tdq', new TdqModule(cfg.tdq, gen));
      this.tdq.initConstant(0.1);
    }
  }

  private readonly gradScale: number | undefined;

  get qmax(): number {
    return levels(this.bits, this.range.signed).qmax;
  }

  setRange(r: ActRange): void {
    // As stored (float32), so a reloaded checkpoint has the very same range.
    this.range = { signed: r.signed, zeroPoint: Math.fround(r.zeroPoint) };
    setScalarBuffer(this.signedBuf, [r.signed ? 1 : 0]);
    setScalarBuffer(this.zeroPointBuf, [r.zeroPoint]);
  }

  /** Re-reads the range buffers after a state-dict load (a blocking read; load time only). */
  syncRangeFromBuffers(): void {
    const s = this.signedBuf.dataSync()[0], z = this.zeroPointBuf.dataSync()[0];
    if (s !== 0 && s !== 1) throw new RangeError(`${this.name}.signed must be 0 or 1, got ${s}`);
    if (!Number.isFinite(z)) throw new RangeError(`${this.name}.zero_point must be finite, got ${z}`);
    this.range = { signed: s === 1, zeroPoint: z };
  }

  /** Sets the static step (LSQ: step; PACT: alpha = step * qmax) or, for TDQ, a constant initial output. */
  setStaticStep(step: number): void {
    if (!(step > 0) || !Number.isFinite(step)) throw new RangeError(`${this.name}: step must be positive and finite, got ${step}`);
    if (this.step) setScalarBuffer(this.step, [step]);
    else if (this.alpha) setScalarBuffer(this.alpha, [step * this.qmax]);
    else this.tdq!.initConstant(step);
  }

  /** Quantizer parameters as a tensor of step sizes for the batch: (1) static, (B) TDQ. */
  stepTensor(): Tensor {
    if (this.step) return this.step;
    if (this.alpha) return scale(this.alpha, 1 / this.qmax);
    if (this.ctx.useTable) return this.ctx.tableSteps(this);
    return this.tdq!.forward(this.ctx.encoding());
  }

  forward(x: Tensor): Tensor {
    if (this.ctx.mode === 'fp') return x;
    if (this.ctx.mode === 'observe') {
      this.ctx.observer?.(this, x, this.ctx.tValues);
      return x;
    }
    if (this.bypass) return x;
    const { signed, zeroPoint } = this.range;
    const xs = zeroPoint !== 0 ? addScalar(x, -zeroPoint) : x;
    let y: Tensor;
    if (this.kind === 'pact') y = this.pact(xs);
    else {
      const s = clamp(this.stepTensor(), STEP_FLOOR);
      const granularity = this.kind === 'tdq' ? 'sample' : 'tensor';
      if (granularity === 'sample' && s.shape[0] !== x.shape[0])
        throw new RangeError(`${this.name}: ${s.shape[0]} timesteps for a batch of ${x.shape[0]}`);
      y = fakeQuantize(xs, s, { bits: this.bits, signed, granularity, axis: 0, gradScale: this.gradScale });
    }
    return zeroPoint !== 0 ? addScalar(y, zeroPoint) : y;
  }

  /** PACT's clipping bound as forward uses it (floored). */
  pactAlpha(): Tensor {
    return clamp(this.alpha!, STEP_FLOOR * levels(this.bits, this.range.signed).qmax);
  }

  /** PACT's clip of x (already shifted by the zero point) to [0, alpha] or [-alpha, alpha], no gradient. */
  pactClip(x: Tensor): Tensor {
    const alpha = this.pactAlpha();
    const upper = relu(sub(x, alpha));
    return this.range.signed ? add(sub(x, upper), relu(sub(scale(x, -1), alpha))) : sub(relu(x), upper);
  }

  /**
   * PACT (Choi et al. 2018): clip to [-alpha, alpha] (signed) or [0, alpha],
   * quantize with step alpha / qmax, and pass the gradient straight through the
   * rounding: d/dalpha is 1 above alpha (-1 below -alpha) and 0 inside, unlike
   * LSQ, whose step gradient also sees the rounding error inside the range.
   */
  private pact(x: Tensor): Tensor {
    const alpha = this.pactAlpha();
    const { signed } = this.range;
    // clip(x) = x - relu(x - alpha) (+ relu(-x - alpha) when signed; relu(x) first when unsigned)
    const upper = relu(sub(x, alpha));
    const c = signed ? add(sub(x, upper), relu(sub(scale(x, -1), alpha))) : sub(relu(x), upper);
    const q = noGrad(() => {
      const s = scale(detach(alpha), 1 / levels(this.bits, signed).qmax);
      return fakeQuantize(detach(c), s, { bits: this.bits, signed, granularity: 'tensor' });
    });
    return add(c, noGrad(() => sub(q, c)));
  }
}
