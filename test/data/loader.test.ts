import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Dataset } from '../../src/data/dataset';
import { DataLoader, epochPermutation, sampleTensor } from '../../src/data/loader';
import { SyntheticDataset } from '../../src/data/synthetic';

/** Sample i is filled with the value i: batches show which samples they hold. */
class IndexDataset implements Dataset {
  readonly name = 'index';
  readonly channels = 1;
  readonly height = 2;
  readonly width = 3;
  readonly numClasses = 0;
  constructor(readonly length: number) {}
  get(i: number, out = new Float32Array(6), off = 0): Float32Array {
    for (let k = 0; k < 6; ++k) out[off + k] = i * 10 + k;
    return out;
  }
  label(): number {
    return -1;
  }
}

describe('SyntheticDataset', () => {
  it('is a pure function of (seed, index)', () => {
    const a = new SyntheticDataset({ count: 20, channels: 3, size: 16, seed: 4 });
    const b = new SyntheticDataset({ count: 20, channels: 3, size: 16, seed: 4 });
    const c = new SyntheticDataset({ count: 20, channels: 3, size: 16, seed: 5 });
    for (let i = 0; i < 20; ++i) {
      assert.deepEqual([...a.get(i)], [...b.get(i)]);
      assert.equal(a.label(i), b.label(i));
    }
    let differ = 0;
    for (let i = 0; i < 20; ++i) if (a.get(i).some((v, k) => v !== c.get(i)[k])) differ += 1;
    assert.equal(differ, 20);
  });

  for (const kind of ['shapes', 'blobs'] as const) {
    it(`${kind}: values in [-1, 1], labels in range, every class present`, () => {
      const ds = new SyntheticDataset({ count: 200, kind, size: [12, 20], channels: 2 });
      assert.equal(ds.numClasses, kind === 'shapes' ? 4 : 3);
      const seen = new Set<number>();
      for (let i = 0; i < ds.length; ++i) {
        const x = ds.get(i);
        assert.equal(x.length, 2 * 12 * 20);
        for (const v of x) assert.ok(v >= -1 && v <= 1, `value ${v}`);
        assert.ok(x.some((v) => v > -0.5), 'an image has some foreground');
        seen.add(ds.label(i));
      }
      assert.equal(seen.size, ds.numClasses);
    });
  }

  it('draws more foreground for more blobs on average', () => {
    const ds = new SyntheticDataset({ count: 300, kind: 'blobs', size: 24 });
    const mass = [0, 0, 0], n = [0, 0, 0];
    for (let i = 0; i < ds.length; ++i) {
      const l = ds.label(i);
      mass[l] += ds.get(i).reduce((a, v) => a + (v + 1), 0);
      n[l] += 1;
    }
    const avg = mass.map((m, l) => m / n[l]);
    assert.ok(avg[0] < avg[1] && avg[1] < avg[2], `mean mass per class ${avg.join(', ')}`);
  });
});

describe('DataLoader', () => {
  it('shuffles each epoch into a permutation, differently per epoch and seed', () => {
    const p0 = epochPermutation(50, 7, 0), p1 = epochPermutation(50, 7, 1), q0 = epochPermutation(50, 8, 0);
    for (const p of [p0, p1, q0]) assert.deepEqual([...p].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
    assert.notDeepEqual([...p0], [...p1]);
    assert.notDeepEqual([...p0], [...q0]);
    assert.deepEqual([...epochPermutation(50, 7, 1)], [...p1]);
  });

  it('places each element at each position about equally often', () => {
    const n = 5, epochs = 2000;
    const counts = Array.from({ length: n }, () => new Array(n).fill(0));
    for (let e = 0; e < epochs; ++e) epochPermutation(n, 3, e).forEach((v, pos) => (counts[v][pos] += 1));
    // Expected 400 each; a binomial sd of ~18, so 320..480 is a > 4 sd band.
    for (const row of counts) for (const c of row) assert.ok(c > 320 && c < 480, `count ${c}`);
  });

  it('covers every sample once per epoch; dropLast keeps batch shapes fixed', () => {
    const ds = new IndexDataset(10);
    const all = new DataLoader(ds, { batchSize: 4, seed: 1, dropLast: false });
    assert.equal(all.batchesPerEpoch, 3);
    const seen: number[] = [];
    const sizes: number[] = [];
    for (const b of all.epochBatches()) {
      seen.push(...b.indices);
      sizes.push(b.shape[0]);
      assert.equal(b.epoch, 0);
      b.indices.forEach((idx, k) => assert.equal(b.data[k * 6], idx * 10));
    }
    assert.deepEqual(sizes, [4, 4, 2]);
    assert.deepEqual(seen.sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => i));

    const fixed = new DataLoader(ds, { batchSize: 4, seed: 1 });
    assert.equal(fixed.batchesPerEpoch, 2);
    const epochs: number[] = [];
    for (let k = 0; k < 5; ++k) {
      const b = fixed.nextArrays();
      assert.equal(b.shape[0], 4);
      epochs.push(b.epoch);
    }
    assert.deepEqual(epochs, [0, 0, 1, 1, 2]);
    assert.throws(() => new DataLoader(ds, { batchSize: 11 }), /batch size 11 exceeds the 10 samples/);
  });

  it('restores its state exactly, mid-epoch and across epochs', () => {
    const ds = new SyntheticDataset({ count: 23, size: 8, seed: 2 });
    const a = new DataLoader(ds, { batchSize: 5, seed: 11, hflip: true });
    for (let k = 0; k < 6; ++k) a.nextArrays(); // into epoch 1
    const saved = JSON.parse(JSON.stringify(a.state()));
    assert.deepEqual(saved, { epoch: 1, position: 10, seed: 11, length: 23 });
    const want = Array.from({ length: 7 }, () => a.nextArrays());
    const b = new DataLoader(ds, { batchSize: 5, seed: 0, hflip: true });
    b.setState(saved);
    for (const w of want) {
      const got = b.nextArrays();
      assert.deepEqual([...got.indices], [...w.indices]);
      assert.deepEqual([...got.data], [...w.data]);
      assert.equal(got.epoch, w.epoch);
    }
    assert.deepEqual(b.state(), a.state());
  });

  it('rejects a state from another dataset or out of range', () => {
    const l = new DataLoader(new IndexDataset(10), { batchSize: 2 });
    assert.throws(() => l.setState({ epoch: 0, position: 0, seed: 0, length: 12 }), /saved for a dataset of 12 samples/);
    assert.throws(() => l.setState({ epoch: -1, position: 0, seed: 0 }), /epoch must be a non-negative integer/);
    assert.throws(() => l.setState({ epoch: 0, position: 11, seed: 0 }), /position 11 is past/);
  });

  it('mirrors about half of the samples with hflip, the same way for the same seed', () => {
    const ds = new IndexDataset(400);
    const l = new DataLoader(ds, { batchSize: 400, seed: 5, shuffle: false, hflip: true });
    const b = l.nextArrays();
    let flipped = 0;
    for (let k = 0; k < 400; ++k) {
      const row = [...b.data.subarray(k * 6, k * 6 + 3)];
      const base = k * 10;
      if (row[0] === base + 2) {
        flipped += 1;
        assert.deepEqual(row, [base + 2, base + 1, base]);
      } else assert.deepEqual(row, [base, base + 1, base + 2]);
    }
    assert.ok(flipped > 160 && flipped < 240, `${flipped} of 400 flipped`);
    const again = new DataLoader(ds, { batchSize: 400, seed: 5, shuffle: false, hflip: true }).nextArrays();
    assert.deepEqual([...again.data], [...b.data]);
  });

  it('gives (B, C, H, W) float32 tensors and int32 labels', async () => {
    const ds = new SyntheticDataset({ count: 12, size: 8, channels: 3, seed: 1 });
    const l = new DataLoader(ds, { batchSize: 4, seed: 3 });
    const ref = new DataLoader(ds, { batchSize: 4, seed: 3 }).nextArrays();
    const b = l.next();
    assert.deepEqual([...b.x.shape], [4, 3, 8, 8]);
    assert.equal(b.x.dtype, 'float32');
    assert.deepEqual([...(await b.x.data())], [...ref.data]);
    assert.ok(b.y);
    assert.equal(b.y.dtype, 'int32');
    assert.deepEqual([...(await b.y.data())], [...ref.labels]);
    b.x.dispose();
    b.y.dispose();
    const s = sampleTensor(ds, 5);
    assert.deepEqual([...s.shape], [3, 8, 8]);
    assert.deepEqual([...(await s.data())], [...ds.get(5)]);
    s.dispose();
    const unl = new DataLoader(new IndexDataset(4), { batchSize: 2 }).next();
    assert.equal(unl.y, null);
    assert.deepEqual([...unl.labels], [-1, -1]);
    unl.x.dispose();
  });
});
