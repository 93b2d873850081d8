// The Encoder and Decoder of the CompVis first-stage autoencoders
// (ldm.modules.diffusionmodules.model): ResnetBlocks without a timestep
// embedding, single-head attention over H*W, stride-2 convs after (0,1,0,1)
// padding going down, nearest x2 + conv going up. State-dict keys as upstream:
// encoder.conv_in, encoder.down.{i}.block.{j}.norm1, encoder.down.{i}.attn.{j}.q,
// encoder.down.{i}.downsample.conv, encoder.mid.block_1 / attn_1 / block_2,
// encoder.norm_out, encoder.conv_out; the decoder's up.{i} are indexed by
// level (up.0 is the full-resolution level, run last) although built from the top.
import { Module } from '../../nn/module';
import { Identity } from '../../nn/containers';
import { Conv2d, Dropout, GroupNorm } from '../../nn/layers';
import { scaledDotProductAttention } from '../../tensor/ops/attention';
import { silu } from '../../tensor/ops/activation';
import { add, reshape, tanh } from '../../tensor/ops/elementwise';
import { pad2d } from '../../tensor/ops/pad';
import { avgPool2d, upsampleNearest2x } from '../../tensor/ops/pool';
import { permute } from '../../tensor/ops/shape';
import { Generator } from '../../tensor/random';
import { type Tensor, shapeToString } from '../../tensor/tensor';

/** Upstream's ddconfig (the keyword arguments of Encoder and Decoder). */
export interface DDConfig {
  /** The encoder outputs 2 * z_channels (mean and log-variance) when true (upstream default true). */
  double_z?: boolean;
  z_channels: number;
  /** Input size in pixels: only used to place attention (attn_resolutions are sizes in pixels). */
  resolution: number;
  in_channels: number;
  out_ch: number;
  ch: number;
  ch_mult: number[];
  num_res_blocks: number;
  attn_resolutions: number[];
  dropout?: number;
  resamp_with_conv?: boolean;
  /** 'vanilla' (AttnBlock) or 'none' (identity); upstream's 'linear' is not implemented. */
  attn_type?: 'vanilla' | 'none';
  /** Decoder: return the features before norm_out / conv_out. */
  give_pre_end?: boolean;
  /** Decoder: tanh on the output. */
  tanh_out?: boolean;
  /** Not upstream (which hard-codes 32): groups of every GroupNorm, for tiny test models. */
  norm_num_groups?: number;
}

export type ResolvedDDConfig = Required<DDConfig>;

/** Fills defaults and checks the values, naming the key at fault. */
export function resolveDDConfig(cfg: DDConfig): ResolvedDDConfig {
  const c: ResolvedDDConfig = {
    double_z: true,
    dropout: 0,
    resamp_with_conv: true,
    attn_type: 'vanilla',
    give_pre_end: false,
    tanh_out: false,
    norm_num_groups: 32,
    ...cfg,
  };
  const posInt = (k: keyof DDConfig, v: unknown) => {
    if (!Number.isInteger(v) || (v as number) < 1) throw new RangeError(`ddconfig.${k} must be a positive integer, got ${String(v)}`);
  };
  for (const k of ['z_channels', 'resolution', 'in_channels', 'out_ch', 'ch', 'num_res_blocks', 'norm_num_groups'] as const) posInt(k, c[k]);
  if (!Array.isArray(c.ch_mult) || c.ch_mult.length === 0) throw new RangeError('ddconfig.ch_mult must be a non-empty list of positive integers');
  c.ch_mult.forEach((m, i) => posInt(`ch_mult[${i}]` as keyof DDConfig, m));
  if (!Array.isArray(c.attn_resolutions)) throw new RangeError('ddconfig.attn_resolutions must be a list of sizes in pixels');
  if (!(c.dropout >= 0 && c.dropout < 1)) throw new RangeError(`ddconfig.dropout must be in [0, 1), got ${c.dropout}`);
  if (c.attn_type !== 'vanilla' && c.attn_type !== 'none')
    throw new RangeError(`ddconfig.attn_type must be 'vanilla' or 'none', got '${String(c.attn_type)}' (linear attention is not implemented)`);
  for (const m of [1, ...c.ch_mult])
    if ((c.ch * m) % c.norm_num_groups !== 0)
      throw new RangeError(`ddconfig: ${c.ch * m} channels (ch ${c.ch} x ${m}) are not divisible into ${c.norm_num_groups} GroupNorm groups`);
  return c;
}

const normalize = (c: number, groups: number) => new GroupNorm(groups, c, 1e-6);

/** A named container with no forward of its own (upstream's bare nn.Module()). */
class Namespace extends Module {}

export class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly dropout: Dropout;
  readonly conv2: Conv2d;
  readonly ninShortcut: Conv2d | null;
  constructor(readonly inChannels: number, readonly outChannels: number, dropout: number, groups: number, gen: Generator) {
    super();
    this.norm1 = this.registerModule('norm1', normalize(inChannels, groups));
    this.conv1 = this.registerModule('conv1', new Conv2d(inChannels, outChannels, 3, { padding: 1, gen }));
    this.norm2 = this.registerModule('norm2', normalize(outChannels, groups));
    this.dropout = this.registerModule('dropout', new Dropout(dropout));
    this.conv2 = this.registerModule('conv2', new Conv2d(outChannels, outChannels, 3, { padding: 1, gen }));
    this.ninShortcut = inChannels !== outChannels ? this.registerModule('nin_shortcut', new Conv2d(inChannels, outChannels, 1, { gen })) : null;
  }
  forward(x: Tensor): Tensor {
    const h = this.conv1.forward(silu(this.norm1.forward(x)));
    const h2 = this.conv2.forward(this.dropout.forward(silu(this.norm2.forward(h))));
    return add(this.ninShortcut ? this.ninShortcut.forward(x) : x, h2);
  }
}

/** Single-head self-attention over the H*W positions, 1x1 convs for q, k, v and proj_out, scale C^-1/2. */
export class AttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly projOut: Conv2d;
  constructor(readonly channels: number, groups: number, gen: Generator) {
    super();
    this.norm = this.registerModule('norm', normalize(channels, groups));
    this.q = this.registerModule('q', new Conv2d(channels, channels, 1, { gen }));
    this.k = this.registerModule('k', new Conv2d(channels, channels, 1, { gen }));
    this.v = this.registerModule('v', new Conv2d(channels, channels, 1, { gen }));
    this.projOut = this.registerModule('proj_out', new Conv2d(channels, channels, 1, { gen }));
  }
  forward(x: Tensor): Tensor {
    const [b, c, hh, ww] = x.shape;
    const n = hh * ww;
    const h = this.norm.forward(x);
    // (B, C, H, W) -> (B, 1, HW, C): one head over all channels.
    const tokens = (t: Tensor) => reshape(permute(reshape(t, [b, c, n]), [0, 2, 1]), [b, 1, n, c]);
    const a = scaledDotProductAttention(tokens(this.q.forward(h)), tokens(this.k.forward(h)), tokens(this.v.forward(h)));
    const back = reshape(permute(reshape(a, [b, n, c]), [0, 2, 1]), [b, c, hh, ww]);
    return add(x, this.projOut.forward(back));
  }
}

type AttnLike = AttnBlock | Identity;

function makeAttn(c: number, cfg: ResolvedDDConfig, gen: Generator): AttnLike {
  return cfg.attn_type === 'vanilla' ? new AttnBlock(c, cfg.norm_num_groups, gen) : new Identity();
}

/**
 * Zero-pads right and bottom by one (as the TF DDPM's 'SAME' stride 2), then a
 * stride-2 3x3 conv (or 2x2 average pooling without conv). Also the DDPM UNet's (ddpm_unet.ts).
 */
export class Downsample extends Module {
  readonly conv: Conv2d | null;
  constructor(c: number, withConv: boolean, gen: Generator) {
    super();
    this.conv = withConv ? this.registerModule('conv', new Conv2d(c, c, 3, { stride: 2, padding: 0, gen })) : null;
  }
  forward(x: Tensor): Tensor {
    return this.conv ? this.conv.forward(pad2d(x, [0, 1, 0, 1])) : avgPool2d(x, 2, 2);
  }
}

/** Nearest-neighbour x2, then (with_conv) a 3x3 conv. */
export class Upsample extends Module {
  readonly conv: Conv2d | null;
  constructor(c: number, withConv: boolean, gen: Generator) {
    super();
    this.conv = withConv ? this.registerModule('conv', new Conv2d(c, c, 3, { padding: 1, gen })) : null;
  }
  forward(x: Tensor): Tensor {
    const u = upsampleNearest2x(x);
    return this.conv ? this.conv.forward(u) : u;
  }
}

interface Level {
  blocks: ResnetBlock[];
  attns: AttnLike[];
  resample: Downsample | Upsample | null;
}

function registerLevel(parent: Module, name: string, lvl: Level, resampleName: string): void {
  const g = parent.registerModule(name, new Namespace());
  const blocks = g.registerModule('block', new Namespace());
  lvl.blocks.forEach((b, j) => blocks.registerModule(String(j), b));
  const attn = g.registerModule('attn', new Namespace());
  lvl.attns.forEach((a, j) => attn.registerModule(String(j), a));
  if (lvl.resample) g.registerModule(resampleName, lvl.resample);
}

function runLevel(lvl: Level, h: Tensor): Tensor {
  lvl.blocks.forEach((b, j) => {
    h = b.forward(h);
    if (lvl.attns.length) h = lvl.attns[j].forward(h);
  });
  return lvl.resample ? lvl.resample.forward(h) : h;
}

class Mid {
  constructor(readonly block1: ResnetBlock, readonly attn1: AttnLike, readonly block2: ResnetBlock) {}
  static create(owner: Module, c: number, cfg: ResolvedDDConfig, gen: Generator): Mid {
    const m = new Mid(
      new ResnetBlock(c, c, cfg.dropout, cfg.norm_num_groups, gen),
      makeAttn(c, cfg, gen),
      new ResnetBlock(c, c, cfg.dropout, cfg.norm_num_groups, gen),
    );
    const ns = owner.registerModule('mid', new Namespace());
    ns.registerModule('block_1', m.block1);
    ns.registerModule('attn_1', m.attn1);
    ns.registerModule('block_2', m.block2);
    return m;
  }
  forward(h: Tensor): Tensor {
    return this.block2.forward(this.attn1.forward(this.block1.forward(h)));
  }
}

function checkInput(who: string, x: Tensor, channels: number): void {
  if (x.ndim !== 4 || x.shape[1] !== channels)
    throw new RangeError(`${who}: expected input of shape [B, ${channels}, H, W], got ${shapeToString(x.shape)}`);
}

/** Image (B, in_channels, H, W) -> (B, z_channels or 2 z_channels, H / 2^(levels-1), ...). */
export class Encoder extends Module {
  readonly config: ResolvedDDConfig;
  readonly convIn: Conv2d;
  readonly down: Level[] = [];
  readonly mid: Mid;
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(cfg: DDConfig, gen: Generator = new Generator(0)) {
    super();
    const c = (this.config = resolveDDConfig(cfg));
    const n = c.ch_mult.length, inMult = [1, ...c.ch_mult];
    this.convIn = this.registerModule('conv_in', new Conv2d(c.in_channels, c.ch, 3, { padding: 1, gen }));
    let res = c.resolution, blockIn = c.ch;
    const down = this.registerModule('down', new Namespace());
    for (let i = 0; i < n; ++i) {
      const lvl: Level = { blocks: [], attns: [], resample: null };
      blockIn = c.ch * inMult[i];
      const blockOut = c.ch * c.ch_mult[i];
      for (let j = 0; j < c.num_res_blocks; ++j) {
        lvl.blocks.push(new ResnetBlock(blockIn, blockOut, c.dropout, c.norm_num_groups, gen));
        blockIn = blockOut;
        if (c.attn_resolutions.includes(res)) lvl.attns.push(makeAttn(blockIn, c, gen));
      }
      if (i !== n - 1) {
        lvl.resample = new Downsample(blockIn, c.resamp_with_conv, gen);
        res = Math.floor(res / 2);
      }
      registerLevel(down, String(i), lvl, 'downsample');
      this.down.push(lvl);
    }
    this.mid = Mid.create(this, blockIn, c, gen);
    this.normOut = this.registerModule('norm_out', normalize(blockIn, c.norm_num_groups));
    this.convOut = this.registerModule('conv_out', new Conv2d(blockIn, c.double_z ? 2 * c.z_channels : c.z_channels, 3, { padding: 1, gen }));
  }

  forward(x: Tensor): Tensor {
    checkInput('Encoder', x, this.config.in_channels);
    let h = this.convIn.forward(x);
    for (const lvl of this.down) h = runLevel(lvl, h);
    h = this.mid.forward(h);
    return this.convOut.forward(silu(this.normOut.forward(h)));
  }
}

/** Latent (B, z_channels, h, w) -> image (B, out_ch, h * 2^(levels-1), ...). */
export class Decoder extends Module {
  readonly config: ResolvedDDConfig;
  readonly convIn: Conv2d;
  readonly mid: Mid;
  /** Indexed by level as upstream's self.up: up[0] is the full-resolution level, run last. */
  readonly up: Level[];
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(cfg: DDConfig, gen: Generator = new Generator(0)) {
    super();
    const c = (this.config = resolveDDConfig(cfg));
    const n = c.ch_mult.length;
    let blockIn = c.ch * c.ch_mult[n - 1];
    let res = Math.floor(c.resolution / 2 ** (n - 1));
    this.convIn = this.registerModule('conv_in', new Conv2d(c.z_channels, blockIn, 3, { padding: 1, gen }));
    this.mid = Mid.create(this, blockIn, c, gen);
    // Built from the lowest resolution up (the order the generator is drawn
    // in, as upstream), registered by level index.
    const levels: Level[] = new Array(n);
    for (let i = n - 1; i >= 0; --i) {
      const lvl: Level = { blocks: [], attns: [], resample: null };
      const blockOut = c.ch * c.ch_mult[i];
      for (let j = 0; j <= c.num_res_blocks; ++j) {
        lvl.blocks.push(new ResnetBlock(blockIn, blockOut, c.dropout, c.norm_num_groups, gen));
        blockIn = blockOut;
        if (c.attn_resolutions.includes(res)) lvl.attns.push(makeAttn(blockIn, c, gen));
      }
      if (i !== 0) {
        lvl.resample = new Upsample(blockIn, c.resamp_with_conv, gen);
        res *= 2;
      }
      levels[i] = lvl;
    }
    const up = this.registerModule('up', new Namespace());
    levels.forEach((lvl, i) => registerLevel(up, String(i), lvl, 'upsample'));
    this.up = levels;
    this.normOut = this.registerModule('norm_out', normalize(blockIn, c.norm_num_groups));
    this.convOut = this.registerModule('conv_out', new Conv2d(blockIn, c.out_ch, 3, { padding: 1, gen }));
  }

  forward(z: Tensor): Tensor {
    checkInput('Decoder', z, this.config.z_channels);
    let h = this.mid.forward(this.convIn.forward(z));
    for (let i = this.up.length - 1; i >= 0; --i) h = runLevel(this.up[i], h);
    if (this.config.give_pre_end) return h;
    h = this.convOut.forward(silu(this.normOut.forward(h)));
    return this.config.tanh_out ? tanh(h) : h;
  }
}
