import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, describe, it } from 'node:test';

import {
  FashionMnistDataset, IdxFormatError, findMnistFiles, loadMnist, parseIdx, readIdxImages,
} from '../../src/data/fashion_mnist';
import { fmnistSkip } from '../helpers/datasets';

function idx(magic: number, dims: number[], data: Uint8Array): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(data)]);
}

// 3 images of 4 x 5 with distinct pixel values, labels 2, 0, 9.
const N = 3, ROWS = 4, COLS = 5;
const pixels = Uint8Array.from({ length: N * ROWS * COLS }, (_, i) => (i * 37) % 256);
const labels = Uint8Array.from([2, 0, 9]);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-idx-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function makeDir(name: string, files: Record<string, Buffer>): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [f, b] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), b);
  return dir;
}

describe('idx files', () => {
  const images = idx(2051, [N, ROWS, COLS], pixels);
  const labs = idx(2049, [N], labels);

  it('reads plain idx files', () => {
    const dir = makeDir('plain', { 'train-images-idx3-ubyte': images, 'train-labels-idx1-ubyte': labs });
    const d = loadMnist({ dataDir: dir, split: 'train' });
    assert.equal(d.count, N);
    assert.equal(d.rows, ROWS);
    assert.equal(d.cols, COLS);
    assert.deepEqual([...d.data], [...pixels]);
    assert.deepEqual([...d.labels], [...labels]);
  });

  it('reads gzip-compressed files (detected from the bytes) for the test split', () => {
    const dir = makeDir('gz', { 't10k-images-idx3-ubyte.gz': zlib.gzipSync(images), 't10k-labels-idx1-ubyte.gz': zlib.gzipSync(labs) });
    const d = loadMnist({ dataDir: dir, split: 'test' });
    assert.deepEqual([...d.data], [...pixels]);
    assert.deepEqual([...d.labels], [...labels]);
    // A gzip file without the .gz suffix is still recognized.
    const f = path.join(tmp, 'gz', 'renamed');
    fs.writeFileSync(f, zlib.gzipSync(images));
    assert.equal(readIdxImages(f).count, N);
  });

  it('names every path tried and the apt package when files are missing', () => {
    const dir = makeDir('empty', {});
    assert.throws(() => findMnistFiles(dir, 'train'), (e: Error) => {
      assert.match(e.message, /train images not found/);
      assert.ok(e.message.includes(path.join(dir, 'train-images-idx3-ubyte.gz')), e.message);
      assert.ok(e.message.includes(path.join(dir, 'train-images-idx3-ubyte')), e.message);
      assert.match(e.message, /apt-get install dataset-fashion-mnist/);
      assert.match(e.message, /--data-dir/);
      return true;
    });
  });

  it('rejects a bad magic number, naming the file and the expected magic', () => {
    const dir = makeDir('swapped', { 'train-images-idx3-ubyte': labs, 'train-labels-idx1-ubyte': images });
    assert.throws(() => loadMnist({ dataDir: dir }), (e: Error) => {
      assert.ok(e instanceof IdxFormatError);
      assert.ok(e.message.includes(path.join(dir, 'train-images-idx3-ubyte')), e.message);
      assert.match(e.message, /bad magic number 2049/);
      assert.match(e.message, /expected 2051/);
      assert.match(e.message, /swapped/);
      return true;
    });
    assert.throws(() => parseIdx(Buffer.from('not an idx file at all'), 2051, 'x'), /x: bad magic number/);
  });

  it('rejects truncated files, raw and gzip', () => {
    const cut = images.subarray(0, images.length - 7);
    const dir = makeDir('trunc', { 'train-images-idx3-ubyte': cut, 'train-labels-idx1-ubyte': labs });
    assert.throws(() => loadMnist({ dataDir: dir }), (e: Error) => {
      assert.match(e.message, /truncated: the header says 3 x 4 x 5 \(60 bytes of data\) but only 53 bytes follow/);
      assert.ok(e.message.includes('train-images-idx3-ubyte'));
      return true;
    });
    const gz = zlib.gzipSync(images);
    const dir2 = makeDir('truncgz', { 'train-images-idx3-ubyte.gz': gz.subarray(0, gz.length - 12), 'train-labels-idx1-ubyte': labs });
    assert.throws(() => loadMnist({ dataDir: dir2 }), /cannot decompress gzip data.*truncated or corrupt/);
    assert.throws(() => parseIdx(images.subarray(0, 9), 2051, 'h'), /h: truncated header/);
    assert.throws(() => parseIdx(Buffer.concat([images, Buffer.from([1, 2])]), 2051, 'x'), /2 unexpected bytes/);
  });

  it('rejects images and labels of different counts', () => {
    const dir = makeDir('mismatch', { 'train-images-idx3-ubyte': images, 'train-labels-idx1-ubyte': idx(2049, [2], labels.subarray(0, 2)) });
    assert.throws(() => loadMnist({ dataDir: dir }), /has 2 labels but .* has 3 images/);
  });
});

describe('FashionMnistDataset', () => {
  const data = { count: N, rows: ROWS, cols: COLS, data: pixels, labels, files: { images: 'i', labels: 'l' } };

  it('gives the native size in [-1, 1] with labels', () => {
    const ds = new FashionMnistDataset({ data });
    assert.equal(ds.length, 3);
    assert.deepEqual([ds.channels, ds.height, ds.width], [1, ROWS, COLS]);
    assert.equal(ds.numClasses, 10);
    const x = ds.get(1);
    for (let i = 0; i < ROWS * COLS; ++i) assert.equal(x[i], Math.fround(pixels[ROWS * COLS + i] / 127.5 - 1));
    assert.deepEqual([ds.label(0), ds.label(1), ds.label(2)], [2, 0, 9]);
    assert.throws(() => ds.get(3), RangeError);
  });

  it('zero-pads to a larger size, centered, with pixel 0 = -1', () => {
    const ds = new FashionMnistDataset({ data, size: [8, 9], fit: { mode: 'pad', pad: 'zero' } });
    const x = ds.get(0);
    // (8 - 4) / 2 = 2 rows and (9 - 5) / 2 = 2 columns before the image.
    for (let y = 0; y < 8; ++y) {
      for (let c = 0; c < 9; ++c) {
        const inside = y >= 2 && y < 6 && c >= 2 && c < 7;
        const want = inside ? pixels[(y - 2) * COLS + (c - 2)] / 127.5 - 1 : -1;
        assert.equal(x[y * 9 + c], Math.fround(want), `(${y}, ${c})`);
      }
    }
  });

  it('edge-pads by replicating border pixels', () => {
    const ds = new FashionMnistDataset({ data, size: 8, fit: { mode: 'pad', pad: 'edge' } });
    const x = ds.get(2);
    const px = (r: number, c: number) => Math.fround(pixels[2 * ROWS * COLS + r * COLS + c] / 127.5 - 1);
    assert.equal(x[0], px(0, 0)); // corner
    assert.equal(x[7 * 8 + 7], px(ROWS - 1, COLS - 1));
    assert.equal(x[0 * 8 + 3], px(0, 2)); // above column 2 of the image (offset 1)
  });

  it('filters classes and limits the count', () => {
    const ds = new FashionMnistDataset({ data, classes: [9, 2] });
    assert.equal(ds.length, 2);
    assert.deepEqual([ds.label(0), ds.label(1)], [2, 9]);
    assert.equal(new FashionMnistDataset({ data, limit: 1 }).length, 1);
    assert.throws(() => new FashionMnistDataset({ data, classes: [5] }), /no samples left/);
  });

  // Without the dataset this skips with the reason (under CI=true it runs and fails).
  it('reads the installed dataset (dataset-fashion-mnist, or TDQ_FASHION_MNIST_DIR)', { skip: fmnistSkip() }, () => {
    const train = loadMnist({ split: 'train' });
    const test = loadMnist({ split: 'test' });
    assert.deepEqual([train.count, train.rows, train.cols], [60000, 28, 28]);
    assert.equal(test.count, 10000);
    // Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    const counts = new Array(10).fill(0);
    for (const l of train.labels) counts[l] += 1;
    assert.deepEqual(counts, new Array(10).fill(6000));
    const tcounts = new Array(10).fill(0);
    for (const l of test.labels) tcounts[l] += 1;
    assert.deepEqual(tcounts, new Array(10).fill(1000));
    const ds = new FashionMnistDataset({ data: train, size: 32 });
    const x = ds.get(0);
    assert.equal(x.length, 32 * 32);
    // The 2-pixel zero border is background (-1); the garment has bright pixels.
    for (let i = 0; i < 32; ++i) assert.equal(x[i], -1);
    assert.ok(Math.max(...x) > 0.5);
  });
});
