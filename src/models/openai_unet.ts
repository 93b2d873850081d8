// The UNet of CompVis latent-diffusion (ldm.modules.diffusionmodules.openaimodel
// .UNetModel), with self-attention blocks or, with use_spatial_transformer,
// SpatialTransformers that cross-attend to a context (transformer.ts). Submodules are
// registered under upstream's names, so `input_blocks.1.0.in_layers.2.weight`
// in an upstream state dict lands in the same parameter here.
import { Module } from '../nn/module';
import { Conv1x1, Conv2d, Dropout, Embedding, GroupNorm, Linear, SiLU } from '../nn/layers';
import { Generator } from '../tensor/random';
import { scaledDotProductAttentionChannelsMajor } from '../tensor/ops/attention';
import { silu } from '../tensor/ops/activation';
import { avgPool2d, upsampleNearest2x } from '../tensor/ops/pool';
import { cat, chunk } from '../tensor/ops/shape';
import { add, addScalar, mul, reshape } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';
import { normSiluInto } from '../nn/fused';
import { timestepEmbedding, zeroModule } from './common';
import { SpatialTransformer } from './transformer';

export interface UNetConfig {
  image_size: number;
  in_channels: number;
  model_channels: number;
  out_channels: number;
  num_res_blocks: number;
  attention_resolutions: number[];
  dropout?: number;
  channel_mult?: number[];
  conv_resample?: boolean;
  num_classes?: number | null;
  num_heads?: number;
  num_head_channels?: number;
  num_heads_upsample?: number;
  use_scale_shift_norm?: boolean;
  resblock_updown?: boolean;
  /** SpatialTransformer (cross-attention to `context`) in place of AttentionBlock. */
  use_spatial_transformer?: boolean;
  transformer_depth?: number;
  /** Width of the context tokens; required with use_spatial_transformer. */
  context_dim?: number | null;
  /** Upstream's head-width rule (see headsAndDim); true as upstream. */
  legacy?: boolean;
}

/** A block that takes the timestep embedding as well as the features. */
interface EmbedBlock {
  forward(x: Tensor, emb: Tensor, context?: Tensor): Tensor;
}

const normalization = (ch: number) => new GroupNorm(32, ch);

export class Downsample extends Module {
  readonly op: Conv2d | null;
  constructor(ch: number, useConv: boolean, gen: Generator, outCh = ch) {
    super();
    this.op = useConv ? this.registerModule('op', new Conv2d(ch, outCh, 3, { stride: 2, padding: 1, gen })) : null;
  }
  forward(x: Tensor): Tensor {
    return this.op ? this.op.forward(x) : avgPool2d(x, 2, 2);
  }
}

export class Upsample extends Module {
  readonly conv: Conv2d | null;
  constructor(ch: number, useConv: boolean, gen: Generator, outCh = ch) {
    super();
    this.conv = useConv ? this.registerModule('conv', new Conv2d(ch, outCh, 3, { padding: 1, gen })) : null;
  }
  forward(x: Tensor): Tensor {
    const up = upsampleNearest2x(x);
    return this.conv ? this.conv.forward(up) : up;
  }
}

/** in_layers = [norm, SiLU, conv]; out_layers = [norm, SiLU, Dropout, conv]. */
class Seq extends Module {
  constructor(readonly mods: Module[]) {
    super();
    mods.forEach((m, i) => this.registerModule(String(i), m));
  }
  forward(x: Tensor): Tensor {
    for (const m of this.mods) x = (m as unknown as { forward(x: Tensor): Tensor }).forward(x);
    return x;
  }
}

export class ResBlock extends Module implements EmbedBlock {
  readonly inNorm: GroupNorm;
  readonly inConv: Conv2d;
  readonly embLinear: Linear;
  readonly outNorm: GroupNorm;
  readonly outDropout: Dropout;
  readonly outConv: Conv2d;
  readonly skip: Conv2d | null;
  readonly hUpd: Upsample | Downsample | null;
  readonly xUpd: Upsample | Downsample | null;

  constructor(
    ch: number,
    embCh: number,
    dropout: number,
    readonly outCh: number,
    readonly useScaleShiftNorm: boolean,
    gen: Generator,
    updown: 'up' | 'down' | null = null,
  ) {
    super();
    this.inNorm = normalization(ch);
    this.inConv = new Conv2d(ch, outCh, 3, { padding: 1, gen });
    this.registerModule('in_layers', new Seq([this.inNorm, new SiLU(), this.inConv]));
    this.hUpd = updown === 'up' ? new Upsample(ch, false, gen) : updown === 'down' ? new Downsample(ch, false, gen) : null;
    this.xUpd = updown === 'up' ? new Upsample(ch, false, gen) : updown === 'down' ? new Downsample(ch, false, gen) : null;
    this.embLinear = new Linear(embCh, useScaleShiftNorm ? 2 * outCh : outCh, { gen });
    this.registerModule('emb_layers', new Seq([new SiLU(), this.embLinear]));
    this.outNorm = normalization(outCh);
    this.outDropout = new Dropout(dropout);
    this.outConv = zeroModule(new Conv2d(outCh, outCh, 3, { padding: 1, gen }));
    this.registerModule('out_layers', new Seq([this.outNorm, new SiLU(), this.outDropout, this.outConv]));
    this.skip = outCh === ch ? null : this.registerModule('skip_connection', new Conv2d(ch, outCh, 1, { gen }));
  }

  forward(x: Tensor, emb: Tensor): Tensor {
    const e = this.embLinear.forward(silu(emb)); // (B, C) or (B, 2C) with scale-shift
    // Without scale-shift the embedding is added inside inConv; the skip inside outConv.
    const addE = this.useScaleShiftNorm ? null : e;
    let h: Tensor;
    if (this.hUpd && this.xUpd) {
      h = this.hUpd.forward(this.inNorm.forwardSiLU(x));
      x = this.xUpd.forward(x);
      h = this.inConv.forwardAdd(h, addE, null);
    } else {
      // inConv(silu(inNorm(x))), fused where the conv can (nn/fused.ts)
      h = normSiluInto(this.inNorm, this.inConv, x, null, null, { addChannel: addE });
    }
    const skip = this.skip ? this.skip.forward(x) : x;
    if (this.useScaleShiftNorm) {
      const [scale, shift] = chunk(reshape(e, [e.shape[0], e.shape[1], 1, 1]), 2, 1); // (B, C, 1, 1) each
      // outConv(dropout(silu(outNorm(h) * (scale + 1) + shift))) + skip
      return normSiluInto(this.outNorm, this.outConv, h, { scale, shift }, this.outDropout, { residual: skip });
    }
    return normSiluInto(this.outNorm, this.outConv, h, null, this.outDropout, { residual: skip });
  }
}

/** Self-attention over the pixels with QKVAttentionLegacy's head layout. */
export class AttentionBlock extends Module {
  readonly numHeads: number;
  readonly norm: GroupNorm;
  readonly qkv: Conv1x1;
  readonly projOut: Conv1x1;

  constructor(readonly channels: number, numHeads: number, numHeadChannels: number, gen: Generator) {
    super();
    this.numHeads = numHeadChannels === -1 ? numHeads : Math.floor(channels / numHeadChannels);
    if (!(this.numHeads >= 1) || channels % this.numHeads !== 0)
      throw new RangeError(`AttentionBlock: ${channels} channels cannot be split into ${this.numHeads} heads (num_heads=${numHeads}, num_head_channels=${numHeadChannels})`);
    this.norm = this.registerModule('norm', normalization(channels));
    this.qkv = this.registerModule('qkv', new Conv1x1(channels, 3 * channels, { gen }));
    this.projOut = this.registerModule('proj_out', zeroModule(new Conv1x1(channels, channels, { gen })));
  }

  forward(x: Tensor): Tensor {
    const [b, c, ...spatial] = x.shape;
    const l = spatial.reduce((a, d) => a * d, 1);
    const heads = this.numHeads, ch = c / heads;
    const xf = reshape(x, [b, c, l]);
    const qkv = this.qkv.forward(this.norm.forward(xf)); // (B, 3C, L), per head [q; k; v]
    const [q, k, v] = chunk(reshape(qkv, [b, heads, 3 * ch, l]), 3, 2); // (B, H, ch, L) each
    const a = scaledDotProductAttentionChannelsMajor(q, k, v); // (B, H, ch, L), scale 1/sqrt(ch) as upstream
    const merged = reshape(a, [b, c, l]); // channel = head * ch + c
    return reshape(add(xf, this.projOut.forward(merged)), x.shape);
  }
}

/** TimestepEmbedSequential: passes the embedding to the blocks that take it. */
export class TimestepEmbedSequential extends Module implements EmbedBlock {
  constructor(readonly layers: Module[]) {
    super();
    layers.forEach((m, i) => this.registerModule(String(i), m));
  }
  forward(x: Tensor, emb: Tensor, context?: Tensor): Tensor {
    for (const m of this.layers) {
      if (m instanceof ResBlock) x = m.forward(x, emb);
      else if (m instanceof SpatialTransformer) x = m.forward(x, context);
      else x = (m as unknown as { forward(x: Tensor): Tensor }).forward(x);
    }
    return x;
  }
}

export class UNetModel extends Module {
  readonly config: Required<UNetConfig>;
  readonly timeEmbed: [Linear, Linear];
  readonly labelEmb: Embedding | null;
  readonly inputBlocks: TimestepEmbedSequential[] = [];
  readonly middleBlock: TimestepEmbedSequential;
  readonly outputBlocks: TimestepEmbedSequential[] = [];
  readonly outNorm: GroupNorm;
  readonly outConv: Conv2d;

  constructor(cfg: UNetConfig, gen: Generator = new Generator(0)) {
    super();
    const c: Required<UNetConfig> = {
      dropout: 0,
      channel_mult: [1, 2, 4, 8],
      conv_resample: true,
      num_classes: null,
      num_heads: -1,
      num_head_channels: -1,
      num_heads_upsample: -1,
      use_scale_shift_norm: false,
      resblock_updown: false,
      use_spatial_transformer: false,
      transformer_depth: 1,
      context_dim: null,
      legacy: true,
      ...cfg,
    };
    if (c.num_heads_upsample === -1) c.num_heads_upsample = c.num_heads;
    if (c.num_heads === -1 && c.num_head_channels === -1)
      throw new RangeError('UNetModel: either num_heads or num_head_channels must be set');
    if (c.use_spatial_transformer && c.context_dim == null)
      throw new RangeError('UNetModel: use_spatial_transformer needs context_dim (the width of the cross-attention context)');
    if (c.context_dim != null && !c.use_spatial_transformer)
      throw new RangeError(`UNetModel: context_dim=${c.context_dim} is set but use_spatial_transformer is false (cross-attention needs the spatial transformer)`);
    if (c.context_dim != null && !(Number.isInteger(c.context_dim) && c.context_dim >= 1))
      throw new RangeError(`UNetModel: context_dim must be a positive integer, got ${JSON.stringify(c.context_dim)}`);
    this.config = c;
    const mc = c.model_channels, ted = mc * 4;
    this.timeEmbed = [new Linear(mc, ted, { gen }), new Linear(ted, ted, { gen })];
    this.registerModule('time_embed', new Seq([this.timeEmbed[0], new SiLU(), this.timeEmbed[1]]));
    this.labelEmb = c.num_classes != null ? this.registerModule('label_emb', new Embedding(c.num_classes, ted, { gen })) : null;

    // Upstream recomputes (num_heads, dim_head) at each attention layer and
    // keeps the reassigned num_heads; AttentionBlock gets dim_head as its
    // num_head_channels, and in the decoder num_heads_upsample as num_heads,
    // while SpatialTransformer takes the (possibly reassigned) num_heads.
    let numHeads = c.num_heads;
    const attn = (ch: number, decoder: boolean): Module => {
      let dimHead: number;
      if (c.num_head_channels === -1) dimHead = Math.floor(ch / numHeads);
      else {
        numHeads = Math.floor(ch / c.num_head_channels);
        dimHead = c.num_head_channels;
      }
      if (c.legacy) dimHead = c.use_spatial_transformer ? Math.floor(ch / numHeads) : c.num_head_channels;
      if (!c.use_spatial_transformer) return new AttentionBlock(ch, decoder ? c.num_heads_upsample : numHeads, dimHead, gen);
      return new SpatialTransformer(ch, numHeads, dimHead, { depth: c.transformer_depth, contextDim: c.context_dim, dropout: 0, gen });
    };
    const res = (ch: number, out: number, updown: 'up' | 'down' | null = null) =>
      new ResBlock(ch, ted, c.dropout, out, c.use_scale_shift_norm, gen, updown);

    this.inputBlocks.push(new TimestepEmbedSequential([new Conv2d(c.in_channels, mc, 3, { padding: 1, gen })]));
    const chans = [mc];
    let ch = mc, ds = 1;
    c.channel_mult.forEach((mult, level) => {
      for (let i = 0; i < c.num_res_blocks; ++i) {
        const layers: Module[] = [res(ch, mult * mc)];
        ch = mult * mc;
        if (c.attention_resolutions.includes(ds)) layers.push(attn(ch, false));
        this.inputBlocks.push(new TimestepEmbedSequential(layers));
        chans.push(ch);
      }
      if (level !== c.channel_mult.length - 1) {
        this.inputBlocks.push(new TimestepEmbedSequential([c.resblock_updown ? res(ch, ch, 'down') : new Downsample(ch, c.conv_resample, gen)]));
        chans.push(ch);
        ds *= 2;
      }
    });
    this.middleBlock = new TimestepEmbedSequential([res(ch, ch), attn(ch, false), res(ch, ch)]);
    [...c.channel_mult.entries()].reverse().forEach(([level, mult]) => {
      for (let i = 0; i <= c.num_res_blocks; ++i) {
        const ich = chans.pop()!;
        const layers: Module[] = [res(ch + ich, mc * mult)];
        ch = mc * mult;
        if (c.attention_resolutions.includes(ds)) layers.push(attn(ch, true));
        if (level && i === c.num_res_blocks) {
          layers.push(c.resblock_updown ? res(ch, ch, 'up') : new Upsample(ch, c.conv_resample, gen));
          ds /= 2;
        }
        this.outputBlocks.push(new TimestepEmbedSequential(layers));
      }
    });
    this.registerModule('input_blocks', new Seq(this.inputBlocks));
    this.registerModule('middle_block', this.middleBlock);
    this.registerModule('output_blocks', new Seq(this.outputBlocks));
    this.outNorm = normalization(ch);
    this.outConv = zeroModule(new Conv2d(mc, c.out_channels, 3, { padding: 1, gen }));
    this.registerModule('out', new Seq([this.outNorm, new SiLU(), this.outConv]));
  }

  /**
   * x (B, C, H, W), t (B) float32 timesteps, y (B) int32 class labels when
   * num_classes is set, context (B, M, context_dim) for the cross-attention
   * of a use_spatial_transformer model (without it, attn2 attends to the features).
   */
  forward(x: Tensor, t: Tensor, y?: Tensor, context?: Tensor): Tensor {
    if (this.labelEmb && !y) throw new TypeError('UNetModel: this model is class-conditional (num_classes set): pass class labels y');
    if (context && !this.config.use_spatial_transformer)
      throw new TypeError('UNetModel: a context was given but this model has no cross-attention (use_spatial_transformer is false)');
    if (context && (context.shape.length !== 3 || context.shape[0] !== x.shape[0] || context.shape[2] !== this.config.context_dim))
      throw new RangeError(`UNetModel: context must have shape [${x.shape[0]}, M, ${this.config.context_dim}], got [${context.shape.join(', ')}]`);
    let emb = this.timeEmbed[1].forward(silu(this.timeEmbed[0].forward(timestepEmbedding(t, this.config.model_channels, 'cos-sin'))));
    if (this.labelEmb && y) emb = add(emb, this.labelEmb.forward(y));
    const hs: Tensor[] = [];
    let h = x;
    for (const m of this.inputBlocks) hs.push((h = m.forward(h, emb, context)));
    h = this.middleBlock.forward(h, emb, context);
    for (const m of this.outputBlocks) h = m.forward(cat([h, hs.pop()!], 1), emb, context);
    return this.outConv.forward(this.outNorm.forwardSiLU(h));
  }
}
