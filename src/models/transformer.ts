// The cross-attention pieces of CompVis latent-diffusion's UNet
// (ldm.modules.attention): SpatialTransformer, BasicTransformerBlock,
// CrossAttention and the GEGLU FeedForward. Submodules carry upstream's names
// (`transformer_blocks.0.attn2.to_k.weight`, `ff.net.0.proj.weight`, ...), so
// upstream state dicts load by key. Gradient checkpointing is not done here:
// upstream's `checkpoint` flag changes memory use only, not the result.
import { Module } from '../nn/module';
import { Conv2d, Dropout, GroupNorm, LayerNorm, Linear } from '../nn/layers';
import { Generator } from '../tensor/random';
import { scaledDotProductAttentionSequenceMajor } from '../tensor/ops/attention';
import { gelu } from '../tensor/ops/activation';
import { chunk, permute } from '../tensor/ops/shape';
import { add, mul, reshape } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';
import { zeroModule } from './common';

/** nn.Sequential stand-in: children named 0, 1, ...; only the ones given are registered. */
class Named extends Module {
  constructor(mods: [string, Module][]) {
    super();
    for (const [n, m] of mods) this.registerModule(n, m);
  }
}

/**
 * Multi-head attention of x (B, N, query_dim) to context (B, M, context_dim)
 * (to x itself when no context is given): to_q / to_k / to_v without bias,
 * to_out = [Linear, Dropout], scale dim_head^-0.5.
 */
export class CrossAttention extends Module {
  readonly toQ: Linear;
  readonly toK: Linear;
  readonly toV: Linear;
  readonly toOut: Linear;
  readonly outDropout: Dropout;
  readonly contextDim: number;

  constructor(readonly queryDim: number, contextDim: number | null, readonly heads: number, readonly dimHead: number, dropout: number, gen: Generator) {
    super();
    if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(dimHead) || dimHead < 1)
      throw new RangeError(`CrossAttention: heads and dim_head must be positive integers, got heads=${heads}, dim_head=${dimHead}`);
    const inner = heads * dimHead;
    this.contextDim = contextDim ?? queryDim;
    this.toQ = this.registerModule('to_q', new Linear(queryDim, inner, { gen, bias: false }));
    this.toK = this.registerModule('to_k', new Linear(this.contextDim, inner, { gen, bias: false }));
    this.toV = this.registerModule('to_v', new Linear(this.contextDim, inner, { gen, bias: false }));
    this.toOut = new Linear(inner, queryDim, { gen });
    this.outDropout = new Dropout(dropout);
    this.registerModule('to_out', new Named([['0', this.toOut], ['1', this.outDropout]]));
  }

  forward(x: Tensor, context?: Tensor): Tensor {
    if (!context && x.shape[2] !== this.contextDim)
      throw new RangeError(`CrossAttention: no context given, so it would attend to its input of width ${x.shape[2]}, but to_k/to_v take context_dim=${this.contextDim}: pass a context (B, M, ${this.contextDim})`);
    const ctx = context ?? x;
    if (ctx.shape.length !== 3 || ctx.shape[0] !== x.shape[0] || ctx.shape[2] !== this.contextDim)
      throw new RangeError(`CrossAttention: context must have shape [${x.shape[0]}, M, ${this.contextDim}], got [${ctx.shape.join(', ')}]`);
    const [b, n] = x.shape;
    const m = ctx.shape[1];
    const h = this.heads, d = this.dimHead;
    // 'b n (h d) -> b n h d': the attention reads the heads in place (no permutes)
    const split = (t: Tensor, len: number) => reshape(t, [b, len, h, d]);
    const q = split(this.toQ.forward(x), n);
    const k = split(this.toK.forward(ctx), m);
    const v = split(this.toV.forward(ctx), m);
    const a = scaledDotProductAttentionSequenceMajor(q, k, v, { scale: d ** -0.5 }); // (B, N, H, D)
    const merged = reshape(a, [b, n, h * d]); // 'b n h d -> b n (h d)'
    return this.outDropout.forward(this.toOut.forward(merged));
  }
}

/** GEGLU: proj to 2 * dim_out, then a * gelu(gate) (exact erf GELU, as F.gelu). */
export class GEGLU extends Module {
  readonly proj: Linear;
  constructor(dimIn: number, dimOut: number, gen: Generator) {
    super();
    this.proj = this.registerModule('proj', new Linear(dimIn, 2 * dimOut, { gen }));
  }
  forward(x: Tensor): Tensor {
    const [a, gate] = chunk(this.proj.forward(x), 2, x.shape.length - 1);
    return mul(a, gelu(gate));
  }
}

/** FeedForward(dim, mult=4, glu=True): net = [GEGLU, Dropout, Linear]. */
export class FeedForward extends Module {
  readonly geglu: GEGLU;
  readonly dropout: Dropout;
  readonly out: Linear;
  constructor(dim: number, dropout: number, gen: Generator, mult = 4) {
    super();
    const inner = Math.floor(dim * mult);
    this.geglu = new GEGLU(dim, inner, gen);
    this.dropout = new Dropout(dropout);
    this.out = new Linear(inner, dim, { gen });
    this.registerModule('net', new Named([['0', this.geglu], ['1', this.dropout], ['2', this.out]]));
  }
  forward(x: Tensor): Tensor {
    return this.out.forward(this.dropout.forward(this.geglu.forward(x)));
  }
}

/** attn1 (self), attn2 (to the context), ff, each pre-LayerNormed and residual. */
export class BasicTransformerBlock extends Module {
  readonly attn1: CrossAttention;
  readonly ff: FeedForward;
  readonly attn2: CrossAttention;
  readonly norm1: LayerNorm;
  readonly norm2: LayerNorm;
  readonly norm3: LayerNorm;

  constructor(dim: number, nHeads: number, dHead: number, dropout: number, contextDim: number | null, gen: Generator) {
    super();
    // Registration order = upstream's __init__ order (state-dict key order).
    this.attn1 = this.registerModule('attn1', new CrossAttention(dim, null, nHeads, dHead, dropout, gen));
    this.ff = this.registerModule('ff', new FeedForward(dim, dropout, gen));
    this.attn2 = this.registerModule('attn2', new CrossAttention(dim, contextDim, nHeads, dHead, dropout, gen));
    this.norm1 = this.registerModule('norm1', new LayerNorm(dim));
    this.norm2 = this.registerModule('norm2', new LayerNorm(dim));
    this.norm3 = this.registerModule('norm3', new LayerNorm(dim));
  }

  forward(x: Tensor, context?: Tensor): Tensor {
    x = add(this.attn1.forward(this.norm1.forward(x)), x);
    x = add(this.attn2.forward(this.norm2.forward(x), context), x);
    return add(this.ff.forward(this.norm3.forward(x)), x);
  }
}

export interface SpatialTransformerOptions {
  depth?: number;
  dropout?: number;
  /** Width of the context tokens; null: attn2 attends to the features themselves. */
  contextDim?: number | null;
  gen?: Generator;
}

/**
 * Transformer over the pixels of (B, C, H, W): GroupNorm(32, C, eps 1e-6),
 * proj_in (1x1 conv to n_heads * d_head), `depth` BasicTransformerBlocks on
 * (B, HW, inner), proj_out (1x1 conv back to C, zero-initialised), residual.
 */
export class SpatialTransformer extends Module {
  readonly norm: GroupNorm;
  readonly projIn: Conv2d;
  readonly blocks: BasicTransformerBlock[] = [];
  readonly projOut: Conv2d;
  readonly innerDim: number;
  readonly contextDim: number | null;

  constructor(readonly inChannels: number, nHeads: number, dHead: number, opts: SpatialTransformerOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    const depth = opts.depth ?? 1;
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`SpatialTransformer: depth must be a positive integer, got ${depth}`);
    if (!Number.isInteger(nHeads) || nHeads < 1 || !Number.isInteger(dHead) || dHead < 1)
      throw new RangeError(`SpatialTransformer: n_heads and d_head must be positive integers, got n_heads=${nHeads}, d_head=${dHead} (${inChannels} channels)`);
    this.innerDim = nHeads * dHead;
    this.contextDim = opts.contextDim ?? null;
    this.norm = this.registerModule('norm', new GroupNorm(32, inChannels, 1e-6));
    this.projIn = this.registerModule('proj_in', new Conv2d(inChannels, this.innerDim, 1, { gen }));
    for (let i = 0; i < depth; ++i)
      this.blocks.push(new BasicTransformerBlock(this.innerDim, nHeads, dHead, opts.dropout ?? 0, this.contextDim, gen));
    this.registerModule('transformer_blocks', new Named(this.blocks.map((b, i) => [String(i), b])));
    this.projOut = this.registerModule('proj_out', zeroModule(new Conv2d(this.innerDim, inChannels, 1, { gen })));
  }

  /** x (B, C, H, W); context (B, M, context_dim), or none for self-attention in attn2. */
  forward(x: Tensor, context?: Tensor): Tensor {
    if (x.shape.length !== 4 || x.shape[1] !== this.inChannels)
      throw new RangeError(`SpatialTransformer: x must have shape [B, ${this.inChannels}, H, W], got [${x.shape.join(', ')}]`);
    const [b, , h, w] = x.shape;
    const inner = this.innerDim;
    let t = this.projIn.forward(this.norm.forward(x));
    t = reshape(permute(t, [0, 2, 3, 1]), [b, h * w, inner]); // 'b c h w -> b (h w) c'
    for (const blk of this.blocks) t = blk.forward(t, context);
    t = permute(reshape(t, [b, h, w, inner]), [0, 3, 1, 2]); // 'b (h w) c -> b c h w'
    return add(this.projOut.forward(t), x);
  }
}
