// The quantization configuration: what is quantized, to how many bits, and
// how activation step sizes are produced (static LSQ / PACT, or TDQ). Plain
// JSON, stored in checkpoint metadata under the key `quant`.

/** TDQ module shape (So et al. 2023, Sec. 4): Fourier encoding -> MLP -> softplus. */
export interface TdqModuleConfig {
  /** Width of the sinusoidal encoding of t (geometric frequencies, as the UNet's timestep embedding). */
  encDim: number;
  /** Hidden width of the MLP. */
  hidden: number;
  /** Number of linear layers (ReLU between them, softplus after the last). */
  layers: number;
  /** Dropout before the last linear layer in training (the authors' code uses 0.2; the paper does not mention it). */
  dropout: number;
  /** Longest period of the encoding (10000, as the transformer / UNet embedding). */
  maxPeriod: number;
}

export interface QuantConfig {
  /** Weight bits, 2 to 8 (per output channel, signed). */
  nBitW: number;
  /** Activation bits, 2 to 8 (per tensor; signed or unsigned by the sign of the calibration data). */
  nBitA: number;
  /** TDQ (step size from the timestep) when true; one static step per activation quantizer when false. */
  useDynamic: boolean;
  /** The static activation quantizer: LSQ (learned step) or PACT (learned clipping bound). */
  staticMethod: 'lsq' | 'pact';
  /**
   * Layers kept in full precision (neither weights nor inputs quantized): 'paper' for the
   * paper's choice (see PAPER_KEEP_FP in quantize_model.ts: the timestep-embedding MLP,
   * the first and the last conv), or a list of layer names, where '*' matches any run of
   * characters inside one name (e.g. '*.emb_layers.1'). A name that matches no
   * quantizable layer is an error.
   */
  keepFp: 'paper' | string[];
  /**
   * Also quantize the inputs of the attention matmuls: a quantizer on the output of the
   * q/k/v projection (the QKVAttention placement of the authors' code). Off in the paper's
   * default (legacy attention) setting.
   */
  quantizeAttention: boolean;
  /** Activation step gradient: LSQ's 1/sqrt(n*qmax) scale, or the plain gradient ('none', as the authors' code). */
  actGradScale: 'lsq' | 'none';
  tdq: TdqModuleConfig;
}

export const DEFAULT_TDQ_MODULE: Readonly<TdqModuleConfig> = Object.freeze({
  encDim: 64,
  hidden: 64,
  layers: 4,
  dropout: 0,
  maxPeriod: 10000,
});

export const DEFAULT_QUANT_CONFIG: Readonly<QuantConfig> = Object.freeze({
  nBitW: 8,
  nBitA: 8,
  useDynamic: true,
  staticMethod: 'lsq',
  keepFp: 'paper',
  quantizeAttention: false,
  actGradScale: 'lsq',
  tdq: DEFAULT_TDQ_MODULE,
});

export class QuantConfigError extends RangeError {
  constructor(message: string) {
    super(`quant config: ${message}`);
    this.name = 'QuantConfigError';
  }
}

function checkBits(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new QuantConfigError(`${name} must be an integer from 2 to 8, got ${JSON.stringify(v)}`);
  if (v < 2 || v > 8) throw new QuantConfigError(`${name} must be an integer from 2 to 8, got ${v}`);
  return v;
}

function checkInt(name: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new QuantConfigError(`${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v;
}

const KNOWN_KEYS = new Set(['nBitW', 'nBitA', 'useDynamic', 'staticMethod', 'keepFp', 'quantizeAttention', 'actGradScale', 'tdq']);
const KNOWN_TDQ_KEYS = new Set(['encDim', 'hidden', 'layers', 'dropout', 'maxPeriod']);

/**
 * A complete, validated config from a partial one (defaults from the paper for
 * what is missing). Unknown keys are errors, so a typo does not silently fall
 * back to a default.
 */
export function resolveQuantConfig(partial: Partial<Omit<QuantConfig, 'tdq'>> & { tdq?: Partial<TdqModuleConfig> } = {}): QuantConfig {
  if (partial === null || typeof partial !== 'object' || Array.isArray(partial)) throw new QuantConfigError('must be an object');
  for (const k of Object.keys(partial)) if (!KNOWN_KEYS.has(k)) throw new QuantConfigError(`unknown key '${k}' (known: ${[...KNOWN_KEYS].join(', ')})`);
  const d = DEFAULT_QUANT_CONFIG;
  const tdqIn = partial.tdq ?? {};
  if (tdqIn === null || typeof tdqIn !== 'object') throw new QuantConfigError('tdq must be an object');
  for (const k of Object.keys(tdqIn)) if (!KNOWN_TDQ_KEYS.has(k)) throw new QuantConfigError(`unknown key 'tdq.${k}' (known: ${[...KNOWN_TDQ_KEYS].join(', ')})`);
  const tdq: TdqModuleConfig = { ...d.tdq, ...tdqIn };
  checkInt('tdq.encDim', tdq.encDim, 2);
  if (tdq.encDim % 2) throw new QuantConfigError(`tdq.encDim must be even (sin and cos pairs), got ${tdq.encDim}`);
  checkInt('tdq.hidden', tdq.hidden, 1);
  checkInt('tdq.layers', tdq.layers, 1);
  if (typeof tdq.dropout !== 'number' || !(tdq.dropout >= 0 && tdq.dropout < 1)) throw new QuantConfigError(`tdq.dropout must be in [0, 1), got ${JSON.stringify(tdq.dropout)}`);
  if (typeof tdq.maxPeriod !== 'number' || !(tdq.maxPeriod > 1) || !Number.isFinite(tdq.maxPeriod))
    throw new QuantConfigError(`tdq.maxPeriod must be a finite number > 1, got ${JSON.stringify(tdq.maxPeriod)}`);

  const cfg: QuantConfig = {
    nBitW: checkBits('nBitW', partial.nBitW ?? d.nBitW),
    nBitA: checkBits('nBitA', partial.nBitA ?? d.nBitA),
    useDynamic: partial.useDynamic ?? d.useDynamic,
    staticMethod: partial.staticMethod ?? d.staticMethod,
    keepFp: partial.keepFp ?? d.keepFp,
    quantizeAttention: partial.quantizeAttention ?? d.quantizeAttention,
    actGradScale: partial.actGradScale ?? d.actGradScale,
    tdq,
  };
  if (typeof cfg.useDynamic !== 'boolean') throw new QuantConfigError(`useDynamic must be a boolean, got ${JSON.stringify(cfg.useDynamic)}`);
  if (typeof cfg.quantizeAttention !== 'boolean') throw new QuantConfigError(`quantizeAttention must be a boolean, got ${JSON.stringify(cfg.quantizeAttention)}`);
  if (cfg.staticMethod !== 'lsq' && cfg.staticMethod !== 'pact') throw new QuantConfigError(`staticMethod must be 'lsq' or 'pact', got ${JSON.stringify(cfg.staticMethod)}`);
  if (cfg.actGradScale !== 'lsq' && cfg.actGradScale !== 'none') throw new QuantConfigError(`actGradScale must be 'lsq' or 'none', got ${JSON.stringify(cfg.actGradScale)}`);
  if (cfg.keepFp !== 'paper') {
    if (!Array.isArray(cfg.keepFp) || !cfg.keepFp.every((s) => typeof s === 'string' && s.length > 0))
      throw new QuantConfigError(`keepFp must be 'paper' or a list of layer names, got ${JSON.stringify(cfg.keepFp)}`);
    cfg.keepFp = [...cfg.keepFp];
  }
  return cfg;
}

/** The JSON stored in checkpoint metadata (key `quant`). */
export function quantConfigToJSON(cfg: QuantConfig): string {
  return JSON.stringify(resolveQuantConfig(cfg));
}

/** Parses and validates the metadata string written by quantConfigToJSON. */
export function quantConfigFromJSON(json: string): QuantConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    throw new QuantConfigError(`metadata 'quant' is not valid JSON: ${(e as Error).message}`);
  }
  return resolveQuantConfig(parsed as Partial<QuantConfig>);
}

/** Signed levels -2^(b-1) .. 2^(b-1)-1; unsigned 0 .. 2^b-1 (as the fake-quant kernel). */
export function levels(bits: number, signed: boolean): { qmin: number; qmax: number } {
  return signed ? { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 } : { qmin: 0, qmax: 2 ** bits - 1 };
}

/** A short label such as 'W4A8 TDQ'. */
export function describeConfig(cfg: QuantConfig): string {
  return `W${cfg.nBitW}A${cfg.nBitA} ${cfg.useDynamic ? 'TDQ' : cfg.staticMethod.toUpperCase()}`;
}
