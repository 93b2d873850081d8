// End-to-end checks of the backward pass: small networks must reach a loss
// that gradient descent gets to only with correct gradients (a wrong sign,
// a missing term or a transposed weight gradient leaves them far above it).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Conv2d, Linear } from '../../src/nn/layers';
import { Adam } from '../../src/optim/adam';
import { backward } from '../../src/tensor/autograd';
import { silu } from '../../src/tensor/ops/activation';
import { mean, reshape, square, sub, tanh } from '../../src/tensor/ops/elementwise';
import { avgPool2d } from '../../src/tensor/ops/pool';
import { Generator } from '../../src/tensor/random';
import { tidy } from '../../src/tensor/scope';
import { fromArray, type Tensor } from '../../src/tensor/tensor';

async function fit(params: Tensor[], lr: number, steps: number, lossFn: () => Tensor): Promise<number[]> {
  const opt = new Adam(params, { lr });
  const history: number[] = [];
  for (let s = 0; s < steps; ++s) {
    const l = tidy(() => {
      const loss = lossFn();
      backward(loss);
      return loss;
    });
    opt.step();
    opt.zeroGrad();
    history.push(await l.item());
    l.dispose();
  }
  opt.dispose();
  return history;
}

describe('training small networks end to end', () => {
  it('a two-layer MLP fits sin(3x) on [-1, 1] to MSE < 2e-3', async () => {
    const gen = new Generator(1);
    const l1 = new Linear(1, 64, { gen }), l2 = new Linear(64, 1, { gen });
    const xs = Array.from({ length: 128 }, (_, i) => -1 + (2 * i) / 127);
    const x = fromArray(xs, [128, 1]), y = fromArray(xs.map((v) => Math.sin(3 * v)), [128, 1]);
    const h = await fit([...l1.parameters(), ...l2.parameters()], 1e-2, 400, () => mean(square(sub(l2.forward(tanh(l1.forward(x))), y))));
    assert.ok(h[0] > 0.1, `initial loss ${h[0]} should be far from the target`);
    assert.ok(h[h.length - 1] < 2e-3, `final MSE ${h[h.length - 1]} (start ${h[0]})`);
  });

  it('a small conv net separates horizontal from vertical bars (MSE < 1e-2 on ±1 targets)', async () => {
    const gen = new Generator(2);
    const n = 32, size = 8;
    const data = new Float32Array(n * size * size), target = new Float32Array(n);
    for (let i = 0; i < n; ++i) {
      const vertical = i % 2 === 0, pos = (i >> 1) % size;
      target[i] = vertical ? 1 : -1;
      for (let r = 0; r < size; ++r)
        for (let c = 0; c < size; ++c) data[i * size * size + r * size + c] = (vertical ? c : r) === pos ? 1 : -0.1 * ((r + c) % 3);
    }
    const x = fromArray(data, [n, 1, size, size]), y = fromArray(target, [n, 1]);
    const c1 = new Conv2d(1, 8, 3, { padding: 1, gen }), c2 = new Conv2d(8, 8, 3, { stride: 2, padding: 1, gen }), head = new Linear(8 * 2 * 2, 1, { gen });
    const params = [...c1.parameters(), ...c2.parameters(), ...head.parameters()];
    const h = await fit(params, 1e-2, 300, () => {
      const f = avgPool2d(silu(c2.forward(silu(c1.forward(x)))), 2, 2); // (n, 8, 2, 2)
      return mean(square(sub(head.forward(reshape(f, [n, 32])), y)));
    });
    assert.ok(h[0] > 0.5, `initial loss ${h[0]}`);
    assert.ok(h[h.length - 1] < 1e-2, `final MSE ${h[h.length - 1]} (start ${h[0]})`);
  });
});
