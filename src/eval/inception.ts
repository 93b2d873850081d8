// The FID Inception network: InceptionV3 with the 2015-12-05 TensorFlow
// weights, as ported to PyTorch for FID (pytorch-fid's FIDInceptionA/C/E
// variant of torchvision's Inception3, 1008 output classes). Parameter names
// are that port's state-dict keys (Conv2d_1a_3x3.conv.weight,
// Mixed_5b.branch_pool.bn.running_var, fc.weight, ...), so a converted
// pt_inception-2015-12-05 file loads by key (see scripts/convert-inception.py).
//
// Where the FID variant differs from torchvision's InceptionV3 (these follow
// the TF graph the FID statistics were defined with):
// - the average-pool branches of the A, C and first E blocks divide by the
//   real pixels only (count_include_pad=False);
// - the last E block (Mixed_7c) pools its pool branch with a 3x3 max pool;
// - 1008 logits.
// Every conv is bias-free and followed by BatchNorm (eps 0.001) and ReLU; in
// evaluation the BatchNorm is folded into the conv's weight and bias.
//
// Preprocessing (pytorch-fid): images (N, 3, H, W) in [-1, 1] (the [0, 1]
// images it takes, mapped by 2x - 1) are resized to 299 x 299 bilinearly
// without antialiasing (align_corners=False); grayscale images are repeated
// to 3 channels. Outputs: pool3, the 2048 features after global average
// pooling (FID, KID, precision/recall), and the logits (Inception Score).
import { keep, tidy } from '../tensor/scope';
import { Module, type LoadStateDictOptions, type LoadStateDictResult } from '../nn/module';
import { noGrad } from '../tensor/autograd';
import { conv2d } from '../tensor/ops/conv';
import { affine, broadcastTo, div, mul, relu, reshape, sqrt, sub } from '../tensor/ops/elementwise';
import { linear } from '../tensor/ops/linalg';
import { cat } from '../tensor/ops/shape';
import { pad2d } from '../tensor/ops/pad';
import { globalAvgPool2d, maxPool2d, avgPool2dPadded, resizeBilinear, type ResizeMode } from '../tensor/ops/pool';
import { Generator } from '../tensor/random';
import { type Tensor, shapeToString } from '../tensor/tensor';

export const INCEPTION_NUM_CLASSES = 1008;
export const INCEPTION_FEATURE_DIM = 2048;
export const INCEPTION_INPUT_SIZE = 299;
const BN_EPS = 0.001;

type KSize = number | readonly [number, number];
const pair = (k: KSize): [number, number] => (typeof k === 'number' ? [k, k] : [k[0], k[1]]);

/** A bias-free convolution's weight, under the key "weight" (torch's Conv2d(bias=False)). */
class ConvWeight extends Module {
  readonly weight: Tensor;
  constructor(inC: number, outC: number, k: KSize, gen: Generator) {
    super();
    const [kh, kw] = pair(k);
    // Random weights for tests; real use loads the converted file over them.
    this.weight = this.registerParameter('weight', affine(gen.randn([outC, inC, kh, kw]), Math.sqrt(2 / (inC * kh * kw))));
  }
}

/** BatchNorm2d's state (weight, bias, running_mean, running_var), applied in evaluation mode only. */
class BatchNormState extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  readonly runningMean: Tensor;
  readonly runningVar: Tensor;
  constructor(c: number, gen: Generator) {
    super();
    // Non-trivial random statistics so that tests exercise the folding.
    this.weight = this.registerParameter('weight', affine(gen.rand([c]), 0.5, 0.75));
    this.bias = this.registerParameter('bias', affine(gen.randn([c]), 0.1));
    this.runningMean = this.registerBuffer('running_mean', affine(gen.randn([c]), 0.1));
    this.runningVar = this.registerBuffer('running_var', affine(gen.rand([c]), 0.5, 0.75));
  }
}

/** Conv (no bias) + BatchNorm(eps 0.001) + ReLU: torchvision's BasicConv2d, keys conv.* and bn.*. */
export class BasicConv2d extends Module {
  readonly conv: ConvWeight;
  readonly bn: BatchNormState;
  readonly stride: number;
  readonly padding: [number, number];
  private folded: { w: Tensor; b: Tensor } | null = null;

  constructor(inC: number, outC: number, kernel: KSize, opts: { stride?: number; padding?: KSize; gen: Generator }) {
    super();
    this.conv = this.registerModule('conv', new ConvWeight(inC, outC, kernel, opts.gen));
    this.bn = this.registerModule('bn', new BatchNormState(outC, opts.gen));
    this.stride = opts.stride ?? 1;
    this.padding = pair(opts.padding ?? 0);
  }

  /** Drops the folded weights (after the parameters changed). */
  invalidate(): void {
    this.folded?.w.dispose();
    this.folded?.b.dispose();
    this.folded = null;
  }

  /** w * gamma / sqrt(var + eps) per output channel, and beta - mean * gamma / sqrt(var + eps). */
  private fold(): { w: Tensor; b: Tensor } {
    if (!this.folded) {
      this.folded = noGrad(() =>
        tidy(() => {
          const scale = div(this.bn.weight, sqrt(affine(this.bn.runningVar, 1, BN_EPS)));
          const o = scale.shape[0];
          const w = mul(this.conv.weight, broadcastTo(reshape(scale, [o, 1, 1, 1]), this.conv.weight.shape));
          const b = sub(this.bn.bias, mul(this.bn.runningMean, scale));
          return { w: keep(w), b: keep(b) };
        }),
      );
    }
    return this.folded;
  }

  forward(x: Tensor): Tensor {
    const { w, b } = this.fold();
    const [ph, pw] = this.padding;
    if (ph === pw) return relu(conv2d(x, w, b, { stride: this.stride, padding: ph }));
    // conv2d pads equally on both axes; the 1x7 / 7x1 convs pad one axis only.
    return relu(conv2d(pad2d(x, [pw, pw, ph, ph]), w, b, { stride: this.stride, padding: 0 }));
  }
}

/** 3x3 average pool, stride 1, padding 1, over real pixels only: the FID blocks' pool branch. */
const avgPool3NoPad = (x: Tensor) => avgPool2dPadded(x, 3, { stride: 1, padding: 1, countIncludePad: false });

/** FIDInceptionA: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (64 + 64 + 96 + poolFeatures channels). */
class InceptionA extends Module {
  private readonly b: Record<string, BasicConv2d> = {};
  constructor(inC: number, poolFeatures: number, gen: Generator) {
    super();
    const add = (name: string, m: BasicConv2d) => (this.b[name] = this.registerModule(name, m));
    add('branch1x1', new BasicConv2d(inC, 64, 1, { gen }));
    add('branch5x5_1', new BasicConv2d(inC, 48, 1, { gen }));
    add('branch5x5_2', new BasicConv2d(48, 64, 5, { padding: 2, gen }));
    add('branch3x3dbl_1', new BasicConv2d(inC, 64, 1, { gen }));
    add('branch3x3dbl_2', new BasicConv2d(64, 96, 3, { padding: 1, gen }));
    add('branch3x3dbl_3', new BasicConv2d(96, 96, 3, { padding: 1, gen }));
    add('branch_pool', new BasicConv2d(inC, poolFeatures, 1, { gen }));
  }
  forward(x: Tensor): Tensor {
    const b = this.b;
    return cat(
      [
        b.branch1x1.forward(x),
        b.branch5x5_2.forward(b.branch5x5_1.forward(x)),
        b.branch3x3dbl_3.forward(b.branch3x3dbl_2.forward(b.branch3x3dbl_1.forward(x))),
        b.branch_pool.forward(avgPool3NoPad(x)),
      ],
      1,
    );
  }
}

/** InceptionB (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2. */
class InceptionB extends Module {
  private readonly b: Record<string, BasicConv2d> = {};
  constructor(inC: number, gen: Generator) {
    super();
    const add = (name: string, m: BasicConv2d) => (this.b[name] = this.registerModule(name, m));
    add('branch3x3', new BasicConv2d(inC, 384, 3, { stride: 2, gen }));
    add('branch3x3dbl_1', new BasicConv2d(inC, 64, 1, { gen }));
    add('branch3x3dbl_2', new BasicConv2d(64, 96, 3, { padding: 1, gen }));
    add('branch3x3dbl_3', new BasicConv2d(96, 96, 3, { stride: 2, gen }));
  }
  forward(x: Tensor): Tensor {
    const b = this.b;
    return cat(
      [
        b.branch3x3.forward(x),
        b.branch3x3dbl_3.forward(b.branch3x3dbl_2.forward(b.branch3x3dbl_1.forward(x))),
        maxPool2d(x, 3, { stride: 2 }),
      ],
      1,
    );
  }
}

/** FIDInceptionC (17x17): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1, 192 channels each. */
class InceptionC extends Module {
  private readonly b: Record<string, BasicConv2d> = {};
  constructor(inC: number, c7: number, gen: Generator) {
    super();
    const add = (name: string, m: BasicConv2d) => (this.b[name] = this.registerModule(name, m));
    const row = { padding: [0, 3] as const, gen }, col = { padding: [3, 0] as const, gen };
    add('branch1x1', new BasicConv2d(inC, 192, 1, { gen }));
    add('branch7x7_1', new BasicConv2d(inC, c7, 1, { gen }));
    add('branch7x7_2', new BasicConv2d(c7, c7, [1, 7], row));
    add('branch7x7_3', new BasicConv2d(c7, 192, [7, 1], col));
    add('branch7x7dbl_1', new BasicConv2d(inC, c7, 1, { gen }));
    add('branch7x7dbl_2', new BasicConv2d(c7, c7, [7, 1], col));
    add('branch7x7dbl_3', new BasicConv2d(c7, c7, [1, 7], row));
    add('branch7x7dbl_4', new BasicConv2d(c7, c7, [7, 1], col));
    add('branch7x7dbl_5', new BasicConv2d(c7, 192, [1, 7], row));
    add('branch_pool', new BasicConv2d(inC, 192, 1, { gen }));
  }
  forward(x: Tensor): Tensor {
    const b = this.b;
    const chain = (x0: Tensor, names: string[]) => names.reduce((y, n) => b[n].forward(y), x0);
    return cat(
      [
        b.branch1x1.forward(x),
        chain(x, ['branch7x7_1', 'branch7x7_2', 'branch7x7_3']),
        chain(x, ['branch7x7dbl_1', 'branch7x7dbl_2', 'branch7x7dbl_3', 'branch7x7dbl_4', 'branch7x7dbl_5']),
        b.branch_pool.forward(avgPool3NoPad(x)),
      ],
      1,
    );
  }
}

/** InceptionD (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2. */
class InceptionD extends Module {
  private readonly b: Record<string, BasicConv2d> = {};
  constructor(inC: number, gen: Generator) {
    super();
    const add = (name: string, m: BasicConv2d) => (this.b[name] = this.registerModule(name, m));
    add('branch3x3_1', new BasicConv2d(inC, 192, 1, { gen }));
    add('branch3x3_2', new BasicConv2d(192, 320, 3, { stride: 2, gen }));
    add('branch7x7x3_1', new BasicConv2d(inC, 192, 1, { gen }));
    add('branch7x7x3_2', new BasicConv2d(192, 192, [1, 7], { padding: [0, 3], gen }));
    add('branch7x7x3_3', new BasicConv2d(192, 192, [7, 1], { padding: [3, 0], gen }));
    add('branch7x7x3_4', new BasicConv2d(192, 192, 3, { stride: 2, gen }));
  }
  forward(x: Tensor): Tensor {
    const b = this.b;
    const chain = (x0: Tensor, names: string[]) => names.reduce((y, n) => b[n].forward(y), x0);
    return cat(
      [
        chain(x, ['branch3x3_1', 'branch3x3_2']),
        chain(x, ['branch7x7x3_1', 'branch7x7x3_2', 'branch7x7x3_3', 'branch7x7x3_4']),
        maxPool2d(x, 3, { stride: 2 }),
      ],
      1,
    );
  }
}

/**
 * FIDInceptionE (8x8): 1x1 | 1x1-(1x3 & 3x1) | 1x1-3x3-(1x3 & 3x1) | pool-1x1,
 * 320 + 768 + 768 + 192 = 2048 channels. The pool is the real-pixel average
 * in Mixed_7b and a 3x3 max pool (stride 1, padding 1) in Mixed_7c.
 */
class InceptionE extends Module {
  private readonly b: Record<string, BasicConv2d> = {};
  constructor(inC: number, private readonly pool: 'avg' | 'max', gen: Generator) {
    super();
    const add = (name: string, m: BasicConv2d) => (this.b[name] = this.registerModule(name, m));
    add('branch1x1', new BasicConv2d(inC, 320, 1, { gen }));
    add('branch3x3_1', new BasicConv2d(inC, 384, 1, { gen }));
    add('branch3x3_2a', new BasicConv2d(384, 384, [1, 3], { padding: [0, 1], gen }));
    add('branch3x3_2b', new BasicConv2d(384, 384, [3, 1], { padding: [1, 0], gen }));
    add('branch3x3dbl_1', new BasicConv2d(inC, 448, 1, { gen }));
    add('branch3x3dbl_2', new BasicConv2d(448, 384, 3, { padding: 1, gen }));
    add('branch3x3dbl_3a', new BasicConv2d(384, 384, [1, 3], { padding: [0, 1], gen }));
    add('branch3x3dbl_3b', new BasicConv2d(384, 384, [3, 1], { padding: [1, 0], gen }));
    add('branch_pool', new BasicConv2d(inC, 192, 1, { gen }));
  }
  forward(x: Tensor): Tensor {
    const b = this.b;
    const t = b.branch3x3_1.forward(x);
    const u = b.branch3x3dbl_2.forward(b.branch3x3dbl_1.forward(x));
    const pooled = this.pool === 'avg' ? avgPool3NoPad(x) : maxPool2d(x, 3, { stride: 1, padding: 1 });
    return cat(
      [
        b.branch1x1.forward(x),
        b.branch3x3_2a.forward(t),
        b.branch3x3_2b.forward(t),
        b.branch3x3dbl_3a.forward(u),
        b.branch3x3dbl_3b.forward(u),
        b.branch_pool.forward(pooled),
      ],
      1,
    );
  }
}

/** fc: Linear(2048, 1008), keys fc.weight and fc.bias. */
class Dense extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(inF: number, outF: number, gen: Generator) {
    super();
    this.weight = this.registerParameter('weight', affine(gen.randn([outF, inF]), 1 / Math.sqrt(inF)));
    this.bias = this.registerParameter('bias', affine(gen.randn([outF]), 0.1));
  }
}

export interface InceptionOutputs {
  /** (N, 2048): pool3, the FID features. */
  pool3: Tensor;
  /** (N, 1008): fc(pool3) with the bias. */
  logits: Tensor;
  /** (N, 1008): pool3 W^T without the bias, what the original Inception Score code (and torch-fidelity) uses. */
  logitsUnbiased: Tensor;
}

export interface InceptionOptions {
  /** Seed of the random initial weights (tests; real use loads weights). Default 0. */
  seed?: number;
  /** How images are brought to 299 x 299: torch's bilinear (pytorch-fid, the default) or TF1's ('asymmetric'). */
  resizeMode?: ResizeMode;
}

/** The FID InceptionV3 (see the file comment). Always in evaluation mode. */
export class InceptionV3 extends Module {
  readonly resizeMode: ResizeMode;
  private readonly stem: BasicConv2d[];
  private readonly blocks: Module[];
  readonly fc: Dense;

  constructor(opts: InceptionOptions = {}) {
    super();
    const gen = new Generator(opts.seed ?? 0);
    this.resizeMode = opts.resizeMode ?? 'half_pixel';
    const conv = (name: string, inC: number, outC: number, k: number, o: { stride?: number; padding?: number } = {}) =>
      this.registerModule(name, new BasicConv2d(inC, outC, k, { ...o, gen }));
    this.stem = [
      conv('Conv2d_1a_3x3', 3, 32, 3, { stride: 2 }),
      conv('Conv2d_2a_3x3', 32, 32, 3),
      conv('Conv2d_2b_3x3', 32, 64, 3, { padding: 1 }),
      conv('Conv2d_3b_1x1', 64, 80, 1),
      conv('Conv2d_4a_3x3', 80, 192, 3),
    ];
    this.blocks = [
      this.registerModule('Mixed_5b', new InceptionA(192, 32, gen)),
      this.registerModule('Mixed_5c', new InceptionA(256, 64, gen)),
      this.registerModule('Mixed_5d', new InceptionA(288, 64, gen)),
      this.registerModule('Mixed_6a', new InceptionB(288, gen)),
      this.registerModule('Mixed_6b', new InceptionC(768, 128, gen)),
      this.registerModule('Mixed_6c', new InceptionC(768, 160, gen)),
      this.registerModule('Mixed_6d', new InceptionC(768, 160, gen)),
      this.registerModule('Mixed_6e', new InceptionC(768, 192, gen)),
      this.registerModule('Mixed_7a', new InceptionD(768, gen)),
      this.registerModule('Mixed_7b', new InceptionE(1280, 'avg', gen)),
      this.registerModule('Mixed_7c', new InceptionE(2048, 'max', gen)),
    ];
    this.fc = this.registerModule('fc', new Dense(INCEPTION_FEATURE_DIM, INCEPTION_NUM_CLASSES, gen));
    this.eval();
  }

  /** Loads a state dict; BatchNorm's num_batches_tracked counters (not used in evaluation) are skipped. */
  override loadStateDict(dict: Map<string, Tensor>, opts: LoadStateDictOptions = {}): LoadStateDictResult {
    const filtered = new Map([...dict].filter(([k]) => !k.endsWith('.num_batches_tracked')));
    const r = super.loadStateDict(filtered, opts);
    for (const [, m] of this.namedModules()) if (m instanceof BasicConv2d) m.invalidate();
    return r;
  }

  override dispose(): void {
    for (const [, m] of this.namedModules()) if (m instanceof BasicConv2d) m.invalidate();
    super.dispose();
  }

  /** Resize to 299 x 299 and repeat grayscale to RGB; x in [-1, 1]. */
  preprocess(x: Tensor): Tensor {
    if (x.ndim !== 4 || (x.shape[1] !== 1 && x.shape[1] !== 3))
      throw new RangeError(`InceptionV3: images must be (N, 1 or 3, H, W), got ${shapeToString(x.shape)}`);
    let y = x;
    if (y.shape[1] === 1) y = cat([y, y, y], 1);
    if (y.shape[2] !== INCEPTION_INPUT_SIZE || y.shape[3] !== INCEPTION_INPUT_SIZE)
      y = resizeBilinear(y, [INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE], this.resizeMode);
    return y;
  }

  /** (N, 3, 299, 299) already preprocessed -> pool3 (N, 2048). */
  pool3(x: Tensor): Tensor {
    return noGrad(() => {
      let y = x;
      y = this.stem[0].forward(y); // 149
      y = this.stem[1].forward(y); // 147
      y = this.stem[2].forward(y); // 147
      y = maxPool2d(y, 3, { stride: 2 }); // 73
      y = this.stem[3].forward(y);
      y = this.stem[4].forward(y); // 71
      y = maxPool2d(y, 3, { stride: 2 }); // 35
      for (const b of this.blocks) y = (b as Module & { forward(t: Tensor): Tensor }).forward(y); // 35 -> 17 -> 8
      return reshape(globalAvgPool2d(y), [y.shape[0], INCEPTION_FEATURE_DIM]);
    });
  }

  /** Images in [-1, 1], (N, 1 or 3, H, W) -> pool3 and logits. */
  forward(images: Tensor): InceptionOutputs {
    return noGrad(() =>
      tidy(() => {
        const pool3 = this.pool3(this.preprocess(images));
        const logitsUnbiased = linear(pool3, this.fc.weight, null);
        const logits = linear(pool3, this.fc.weight, this.fc.bias);
        return { pool3, logits, logitsUnbiased };
      }),
    );
  }
}
