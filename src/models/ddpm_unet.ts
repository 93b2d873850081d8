// The pixel-space DDPM UNet of Ho et al. (CIFAR-10: ch 128, ch_mult 1,2,2,2,
// attention at 16) in the layout of its PyTorch port (the `Model` class of
// ldm/modules/diffusionmodules/model.py): keys temb.dense.0.weight, conv_in,
// down.{i}.block.{j}.norm1, down.{i}.attn.{j}.q, down.{i}.downsample.conv,
// mid.block_1, mid.attn_1, up.{i}..., norm_out, conv_out.
import { Module } from '../nn/module';
import { Conv2d, Dropout, GroupNorm, Linear } from '../nn/layers';
import { normSiluInto } from '../nn/fused';
import { Generator } from '../tensor/random';
import { scaledDotProductAttentionChannelsMajor } from '../tensor/ops/attention';
import { silu } from '../tensor/ops/activation';
import { cat } from '../tensor/ops/shape';
import { add, reshape } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';
// Upstream's Model and the first stage's Encoder/Decoder share these (ldm/modules/diffusionmodules/model.py).
import { Downsample, Upsample } from './autoencoder/model';
import { timestepEmbedding } from './common';

export interface DDPMUNetConfig {
  ch: number;
  out_ch: number;
  ch_mult: number[];
  num_res_blocks: number;
  attn_resolutions: number[];
  dropout?: number;
  in_channels: number;
  resolution: number;
  resamp_with_conv?: boolean;
}

const Normalize = (c: number) => new GroupNorm(32, c, 1e-6);

class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly tembProj: Linear;
  readonly norm2: GroupNorm;
  readonly dropout: Dropout;
  readonly conv2: Conv2d;
  readonly ninShortcut: Conv2d | null;
  constructor(inCh: number, outCh: number, tembCh: number, dropout: number, gen: Generator) {
    super();
    this.norm1 = this.registerModule('norm1', Normalize(inCh));
    this.conv1 = this.registerModule('conv1', new Conv2d(inCh, outCh, 3, { padding: 1, gen }));
    this.tembProj = this.registerModule('temb_proj', new Linear(tembCh, outCh, { gen }));
    this.norm2 = this.registerModule('norm2', Normalize(outCh));
    this.dropout = this.registerModule('dropout', new Dropout(dropout));
    this.conv2 = this.registerModule('conv2', new Conv2d(outCh, outCh, 3, { padding: 1, gen }));
    this.ninShortcut = inCh !== outCh ? this.registerModule('nin_shortcut', new Conv2d(inCh, outCh, 1, { gen })) : null;
  }
  forward(x: Tensor, temb: Tensor): Tensor {
    // conv(silu(norm(.))) fused where the conv can (nn/fused.ts); the time
    // embedding and the shortcut are added inside the convolutions.
    const t = this.tembProj.forward(silu(temb));
    const h = normSiluInto(this.norm1, this.conv1, x, null, null, { addChannel: t });
    return normSiluInto(this.norm2, this.conv2, h, null, this.dropout, { residual: this.ninShortcut ? this.ninShortcut.forward(x) : x });
  }
}

class AttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly projOut: Conv2d;
  constructor(c: number, gen: Generator) {
    super();
    this.norm = this.registerModule('norm', Normalize(c));
    this.q = this.registerModule('q', new Conv2d(c, c, 1, { gen }));
    this.k = this.registerModule('k', new Conv2d(c, c, 1, { gen }));
    this.v = this.registerModule('v', new Conv2d(c, c, 1, { gen }));
    this.projOut = this.registerModule('proj_out', new Conv2d(c, c, 1, { gen }));
  }
  forward(x: Tensor): Tensor {
    const [b, c, hh, ww] = x.shape;
    const h = this.norm.forward(x);
    // (B, C, H, W) -> (B, 1, C, HW): one head over all channels, channels-major, scale C^-1/2
    const heads = (t: Tensor) => reshape(t, [b, 1, c, hh * ww]);
    const a = scaledDotProductAttentionChannelsMajor(heads(this.q.forward(h)), heads(this.k.forward(h)), heads(this.v.forward(h)));
    const back = reshape(a, [b, c, hh, ww]);
    return add(x, this.projOut.forward(back));
  }
}

/** A named container without a forward of its own (upstream's bare nn.Module()). */
class Group extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}

interface Level {
  blocks: ResnetBlock[];
  attns: AttnBlock[];
  resample: Downsample | Upsample | null;
}

export class DDPMUNet extends Module {
  readonly config: Required<DDPMUNetConfig>;
  readonly dense: [Linear, Linear];
  readonly convIn: Conv2d;
  readonly down: Level[] = [];
  readonly mid: [ResnetBlock, AttnBlock, ResnetBlock];
  readonly up: Level[] = []; // indexed by level, as upstream's self.up
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(cfg: DDPMUNetConfig, gen: Generator = new Generator(0)) {
    super();
    const c: Required<DDPMUNetConfig> = { dropout: 0, resamp_with_conv: true, ...cfg };
    this.config = c;
    const ch = c.ch, tembCh = ch * 4, n = c.ch_mult.length;
    this.dense = [new Linear(ch, tembCh, { gen }), new Linear(tembCh, tembCh, { gen })];
    const temb = this.registerModule('temb', new Group());
    const dense = temb.registerModule('dense', new Group());
    this.dense.forEach((l, i) => dense.registerModule(String(i), l));
    this.convIn = this.registerModule('conv_in', new Conv2d(c.in_channels, ch, 3, { padding: 1, gen }));

    const inMult = [1, ...c.ch_mult];
    let res = c.resolution, blockIn = ch;
    const downGroup = this.registerModule('down', new Group());
    for (let i = 0; i < n; ++i) {
      const lvl: Level = { blocks: [], attns: [], resample: null };
      blockIn = ch * inMult[i];
      const blockOut = ch * c.ch_mult[i];
      for (let j = 0; j < c.num_res_blocks; ++j) {
        lvl.blocks.push(new ResnetBlock(blockIn, blockOut, tembCh, c.dropout, gen));
        blockIn = blockOut;
        if (c.attn_resolutions.includes(res)) lvl.attns.push(new AttnBlock(blockIn, gen));
      }
      if (i !== n - 1) {
        lvl.resample = new Downsample(blockIn, c.resamp_with_conv, gen);
        res /= 2;
      }
      this.registerLevel(downGroup, String(i), lvl, 'downsample');
      this.down.push(lvl);
    }
    this.mid = [new ResnetBlock(blockIn, blockIn, tembCh, c.dropout, gen), new AttnBlock(blockIn, gen), new ResnetBlock(blockIn, blockIn, tembCh, c.dropout, gen)];
    const mid = this.registerModule('mid', new Group());
    mid.registerModule('block_1', this.mid[0]);
    mid.registerModule('attn_1', this.mid[1]);
    mid.registerModule('block_2', this.mid[2]);

    const upLevels: Level[] = new Array(n);
    for (let i = n - 1; i >= 0; --i) {
      const lvl: Level = { blocks: [], attns: [], resample: null };
      const blockOut = ch * c.ch_mult[i];
      let skipIn = ch * c.ch_mult[i];
      for (let j = 0; j <= c.num_res_blocks; ++j) {
        if (j === c.num_res_blocks) skipIn = ch * inMult[i];
        lvl.blocks.push(new ResnetBlock(blockIn + skipIn, blockOut, tembCh, c.dropout, gen));
        blockIn = blockOut;
        if (c.attn_resolutions.includes(res)) lvl.attns.push(new AttnBlock(blockIn, gen));
      }
      if (i !== 0) {
        lvl.resample = new Upsample(blockIn, c.resamp_with_conv, gen);
        res *= 2;
      }
      upLevels[i] = lvl;
    }
    const upGroup = this.registerModule('up', new Group());
    upLevels.forEach((lvl, i) => this.registerLevel(upGroup, String(i), lvl, 'upsample'));
    this.up.push(...upLevels);
    this.normOut = this.registerModule('norm_out', Normalize(blockIn));
    this.convOut = this.registerModule('conv_out', new Conv2d(blockIn, c.out_ch, 3, { padding: 1, gen }));
  }

  private registerLevel(parent: Module, name: string, lvl: Level, resampleName: string): void {
    const g = parent.registerModule(name, new Group());
    const blocks = g.registerModule('block', new Group());
    lvl.blocks.forEach((b, j) => blocks.registerModule(String(j), b));
    const attn = g.registerModule('attn', new Group());
    lvl.attns.forEach((a, j) => attn.registerModule(String(j), a));
    if (lvl.resample) g.registerModule(resampleName, lvl.resample);
  }

  /** x (B, C, H, W), t (B) float32 timesteps. */
  forward(x: Tensor, t: Tensor): Tensor {
    const temb = this.dense[1].forward(silu(this.dense[0].forward(timestepEmbedding(t, this.config.ch, 'sin-cos'))));
    const hs: Tensor[] = [this.convIn.forward(x)];
    this.down.forEach((lvl) => {
      lvl.blocks.forEach((b, j) => {
        let h = b.forward(hs[hs.length - 1], temb);
        if (lvl.attns.length) h = lvl.attns[j].forward(h);
        hs.push(h);
      });
      if (lvl.resample) hs.push(lvl.resample.forward(hs[hs.length - 1]));
    });
    let h = this.mid[2].forward(this.mid[1].forward(this.mid[0].forward(hs[hs.length - 1], temb)), temb);
    for (let i = this.up.length - 1; i >= 0; --i) {
      const lvl = this.up[i];
      lvl.blocks.forEach((b, j) => {
        h = b.forward(cat([h, hs.pop()!], 1), temb);
        if (lvl.attns.length) h = lvl.attns[j].forward(h);
      });
      if (lvl.resample) h = lvl.resample.forward(h);
    }
    return this.convOut.forward(this.normOut.forwardSiLU(h));
  }
}
