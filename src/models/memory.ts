// Memory estimates from a config, without allocating anything: the parameter
// count of a UNet (counted block by block as the constructors build them) and
// the bytes a sampling / evaluation run would need. Commands check these
// against a limit before loading weights or allocating buffers, so a config
// with num_res_blocks: 100000 or a flag like --n-samples 1e12 fails at once
// with the bytes it would need instead of allocating until the OS kills it.
import os from 'node:os';

import type { DDPMUNetParams, UNetParams } from '../config/schema';
import { DDPM_UNET_TARGET } from '../config/schema';

const F32 = 4;

const conv = (i: number, o: number, k: number) => i * o * k * k + o;
const linear = (i: number, o: number) => i * o + o;
const groupNorm = (c: number) => 2 * c;

/** One feature map the forward pass produces: channels at a resolution, with attention heads if any. */
interface Stage {
  ch: number;
  res: number;
  heads?: number;
}

interface UNetCount {
  params: number;
  stages: Stage[];
}

function countOpenAI(p: UNetParams): UNetCount {
  const mc = p.model_channels, ted = 4 * mc;
  const mult = p.channel_mult ?? [1, 2, 4, 8];
  const nrb = p.num_res_blocks;
  const headsDown = p.num_heads ?? -1, hc = p.num_head_channels ?? -1;
  const headsUp = (p.num_heads_upsample ?? -1) === -1 ? headsDown : p.num_heads_upsample!;
  const heads = (ch: number, h: number) => (hc !== -1 ? Math.max(1, Math.floor(ch / hc)) : Math.max(1, h));
  const stages: Stage[] = [];
  let params = linear(mc, ted) + linear(ted, ted);
  if (p.num_classes != null) params += p.num_classes * ted;
  const res = (ch: number, out: number) =>
    groupNorm(ch) + conv(ch, out, 3) + linear(ted, p.use_scale_shift_norm ? 2 * out : out) + groupNorm(out) + conv(out, out, 3) + (out !== ch ? conv(ch, out, 1) : 0);
  const attn = (ch: number) => groupNorm(ch) + (3 * ch * ch + 3 * ch) + (ch * ch + ch);
  const resample = (ch: number) => (p.resblock_updown ? res(ch, ch) : p.conv_resample === false ? 0 : conv(ch, ch, 3));
  params += conv(p.in_channels, mc, 3);
  let size = p.image_size;
  stages.push({ ch: mc, res: size });
  const chans = [mc];
  let ch = mc, ds = 1;
  mult.forEach((m, level) => {
    for (let i = 0; i < nrb; ++i) {
      params += res(ch, m * mc);
      ch = m * mc;
      const a = p.attention_resolutions.includes(ds);
      if (a) params += attn(ch);
      stages.push({ ch: Math.max(ch, chans[chans.length - 1]), res: size, heads: a ? heads(ch, headsDown) : undefined });
      chans.push(ch);
    }
    if (level !== mult.length - 1) {
      params += resample(ch);
      size = Math.ceil(size / 2);
      stages.push({ ch, res: size });
      chans.push(ch);
      ds *= 2;
    }
  });
  params += 2 * res(ch, ch) + attn(ch);
  stages.push({ ch, res: size, heads: heads(ch, headsDown) }, { ch, res: size });
  for (let level = mult.length - 1; level >= 0; --level) {
    for (let i = 0; i <= nrb; ++i) {
      const ich = chans.pop()!;
      params += res(ch + ich, mc * mult[level]);
      const inCh = ch + ich;
      ch = mc * mult[level];
      const a = p.attention_resolutions.includes(ds);
      if (a) params += attn(ch);
      stages.push({ ch: inCh, res: size, heads: a ? heads(ch, headsUp) : undefined });
      if (level && i === nrb) {
        params += resample(ch);
        size *= 2;
        ds /= 2;
        stages.push({ ch, res: size });
      }
    }
  }
  params += groupNorm(ch) + conv(mc, p.out_channels, 3);
  return { params, stages };
}

function countDDPM(p: DDPMUNetParams): UNetCount {
  const ch = p.ch, temb = 4 * ch, mult = p.ch_mult ?? [1, 2, 2, 2], n = mult.length, nrb = p.num_res_blocks;
  const inMult = [1, ...mult];
  const resnet = (i: number, o: number) => groupNorm(i) + conv(i, o, 3) + linear(temb, o) + groupNorm(o) + conv(o, o, 3) + (i !== o ? conv(i, o, 1) : 0);
  const attn = (c: number) => groupNorm(c) + 4 * conv(c, c, 1);
  const resample = (c: number) => (p.resamp_with_conv === false ? 0 : conv(c, c, 3));
  const stages: Stage[] = [];
  let params = linear(ch, temb) + linear(temb, temb) + conv(p.in_channels, ch, 3);
  let res = p.resolution, blockIn = ch;
  stages.push({ ch, res });
  for (let i = 0; i < n; ++i) {
    blockIn = ch * inMult[i];
    const out = ch * mult[i];
    for (let j = 0; j < nrb; ++j) {
      params += resnet(blockIn, out);
      blockIn = out;
      const a = p.attn_resolutions.includes(res);
      if (a) params += attn(blockIn);
      stages.push({ ch: blockIn, res, heads: a ? 1 : undefined });
    }
    if (i !== n - 1) {
      params += resample(blockIn);
      res = Math.ceil(res / 2);
      stages.push({ ch: blockIn, res });
    }
  }
  params += 2 * resnet(blockIn, blockIn) + attn(blockIn);
  stages.push({ ch: blockIn, res, heads: 1 }, { ch: blockIn, res });
  for (let i = n - 1; i >= 0; --i) {
    const out = ch * mult[i];
    let skipIn = ch * mult[i];
    for (let j = 0; j <= nrb; ++j) {
      if (j === nrb) skipIn = ch * inMult[i];
      params += resnet(blockIn + skipIn, out);
      const inCh = blockIn + skipIn;
      blockIn = out;
      const a = p.attn_resolutions.includes(res);
      if (a) params += attn(blockIn);
      stages.push({ ch: inCh, res, heads: a ? 1 : undefined });
    }
    if (i !== 0) {
      params += resample(blockIn);
      res *= 2;
      stages.push({ ch: blockIn, res });
    }
  }
  params += groupNorm(blockIn) + conv(blockIn, p.out_ch, 3);
  return { params, stages };
}

function countUNet(unet: { target: string; params: unknown }): UNetCount {
  return unet.target === DDPM_UNET_TARGET ? countDDPM(unet.params as DDPMUNetParams) : countOpenAI(unet.params as UNetParams);
}

/** The number of parameters of the UNet of a (validated) unet_config, counted without building it. */
export function countUNetParams(unet: { target: string; params: unknown }): number {
  return countUNet(unet).params;
}

/**
 * Bytes of the activations of one forward pass at batch size `batch` (float32). Sampling runs
 * each step inside one scope, so every intermediate of the pass stays alive until the step
 * ends: we count about 8 tensors of each block's widest feature map (norms, activations,
 * convolutions, residual sums, the skip copy) plus, for attention, the (L x L) scores and
 * their softmax per head. An estimate meant to be on the high side, not an exact figure.
 */
export function estimateActivationBytes(unet: { target: string; params: unknown }, batch: number): number {
  const { stages } = countUNet(unet);
  let elems = 0;
  for (const s of stages) {
    const L = s.res * s.res;
    elems += 8 * s.ch * L;
    if (s.heads) elems += 2 * s.heads * L * L + 4 * s.ch * L;
  }
  return batch * elems * F32;
}

export interface RunMemory {
  /** Weights (float32) and, while loading, the checkpoint's copies of them (model + EMA). */
  weights: number;
  /** One forward pass at the batch size, plus x, eps and a multistep history of a few x-sized tensors. */
  activations: number;
  /** Output buffers the command holds at once (a batch of images, a grid, or all n images for eval). */
  outputs: number;
  total: number;
}

export interface RunShape {
  /** The validated model config's unet_config. */
  unet: { target: string; params: unknown };
  /** (C, H, W) of one sample. */
  sampleShape: readonly [number, number, number];
  batchSize: number;
  /** Number of sample-sized float32 images held at once besides the batch (default 0). */
  heldImages?: number;
}

/** The bytes a run would need, by part; weights are counted three times while loading. */
export function estimateRunMemory(r: RunShape): RunMemory {
  const params = countUNetParams(r.unet);
  const [c, h, w] = r.sampleShape;
  const img = c * h * w * F32;
  const weights = 3 * params * F32;
  const activations = estimateActivationBytes(r.unet, r.batchSize) + 8 * r.batchSize * img;
  const outputs = (r.batchSize + (r.heldImages ?? 0)) * img;
  return { weights, activations, outputs, total: weights + activations + outputs };
}

/** Environment variable that overrides the default memory limit (bytes, or e.g. 8G / 512M). */
export const MAX_MEMORY_ENV = 'TDQ_MAX_MEMORY';
/** The default limit: this share of the machine's memory (os.totalmem()). */
export const DEFAULT_MEMORY_FRACTION = 0.8;

export class MemoryLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryLimitError';
  }
}

/** '8G', '512M', '1.5GiB', '1e9', '2048k' -> bytes (binary units). */
export function parseBytes(s: string | number, what = 'memory limit'): number {
  if (typeof s === 'number') {
    if (!Number.isFinite(s) || s <= 0) throw new MemoryLimitError(`${what}: expected a positive number of bytes, got ${s}`);
    return Math.floor(s);
  }
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new MemoryLimitError(`${what}: expected bytes like 8G, 512M or 1e9, got '${s}'`);
  const v = Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
  if (!(v > 0) || !Number.isFinite(v)) throw new MemoryLimitError(`${what}: expected a positive size, got '${s}'`);
  return Math.floor(v);
}

/** The limit: `flag` if given, else $TDQ_MAX_MEMORY, else DEFAULT_MEMORY_FRACTION x os.totalmem(). */
export function memoryLimit(flag?: string | number): { bytes: number; source: string } {
  if (flag !== undefined && flag !== '') return { bytes: parseBytes(flag, '--max-memory'), source: '--max-memory' };
  const env = process.env[MAX_MEMORY_ENV];
  if (env) return { bytes: parseBytes(env, MAX_MEMORY_ENV), source: `$${MAX_MEMORY_ENV}` };
  return { bytes: Math.floor(DEFAULT_MEMORY_FRACTION * os.totalmem()), source: `${DEFAULT_MEMORY_FRACTION * 100}% of this machine's ${formatBytes(os.totalmem())}` };
}

export function formatBytes(b: number): string {
  if (!Number.isFinite(b)) return `${b} B`;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let i = 0, v = b;
  while (v >= 1024 && i < units.length - 1) (v /= 1024), ++i;
  return i ? `${v.toFixed(1)} ${units[i]} (${Math.round(b)} bytes)` : `${b} bytes`;
}

/** Throws MemoryLimitError stating what the run would need, by part, and the limit, when it exceeds it. */
export function checkRunMemory(what: string, need: RunMemory, limit: { bytes: number; source: string }): void {
  if (need.total <= limit.bytes) return;
  throw new MemoryLimitError(
    `${what} would need about ${formatBytes(need.total)} (weights ${formatBytes(need.weights)}, activations ${formatBytes(need.activations)}, ` +
      `outputs ${formatBytes(need.outputs)}), over the limit of ${formatBytes(limit.bytes)} (${limit.source}). ` +
      `Lower --batch-size (or the model size), or raise the limit with --max-memory or $${MAX_MEMORY_ENV}.`,
  );
}
