import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { PNG } from 'pngjs';

import {
  decodePng, encodePng, fromByte, makeGrid, parsePngHeader, readPng, readPngHeader, saveGrid, saveImages, toByte, writePng,
} from '../../src/io/png';
import { fromArray } from '../../src/tensor/tensor';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-png-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const onGrid = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => fromByte((i * 71 + seed) % 256));

describe('PNG helpers', () => {
  it('maps [-1, 1] to bytes with rounding and clamping', () => {
    assert.deepEqual([-1, 1, 0, -2, 5, NaN, -Infinity, Infinity].map(toByte), [0, 255, 128, 0, 255, 0, 0, 255]);
    for (let b = 0; b < 256; ++b) assert.equal(toByte(fromByte(b)), b);
  });

  it('round-trips grayscale and RGB images exactly, with the matching PNG color type', () => {
    for (const c of [1, 3]) {
      const x = onGrid(c * 7 * 9, c);
      const buf = encodePng(x, [c, 7, 9]);
      const h = parsePngHeader(buf);
      assert.deepEqual([h.width, h.height, h.colorType, h.channels, h.bitDepth], [9, 7, c === 1 ? 0 : 2, c, 8]);
      const y = decodePng(buf);
      assert.deepEqual([y.channels, y.height, y.width], [c, 7, 9]);
      assert.deepEqual([...y.data], [...x]);
    }
  });

  it('stores planar channels as interleaved RGB pixels', () => {
    // 1 x 2 image: pixel 0 red, pixel 1 blue.
    const buf = encodePng([1, -1, -1, -1, -1, 1], [3, 1, 2]);
    const png = PNG.sync.read(buf);
    assert.deepEqual([...png.data], [255, 0, 0, 255, 0, 0, 255, 255]);
  });

  it('converts channels on reading: RGB to luma, gray to RGB', () => {
    const f32 = (xs: number[]) => xs.map(Math.fround);
    const rgb = encodePng([1, -1, -1, 1, -1, -1], [3, 1, 2]); // planar: pixel 0 red, pixel 1 green
    const g = decodePng(rgb, { channels: 1 });
    assert.deepEqual([...g.data], f32([fromByte(0.299 * 255), fromByte(0.587 * 255)]));
    const gray = encodePng([fromByte(10), fromByte(200)], [1, 1, 2]);
    const c = decodePng(gray, { channels: 3 });
    assert.deepEqual([...c.data], f32([fromByte(10), fromByte(200), fromByte(10), fromByte(200), fromByte(10), fromByte(200)]));
  });

  it('reads RGBA PNGs written by other encoders, dropping alpha', () => {
    const png = new PNG({ width: 2, height: 1 });
    png.data.set([10, 20, 30, 0, 40, 50, 60, 255]);
    const buf = PNG.sync.write(png); // RGBA
    assert.equal(parsePngHeader(buf).alpha, true);
    const x = decodePng(buf);
    // Alpha is dropped: the color values stay.
    assert.deepEqual([...x.data], [10, 40, 20, 50, 30, 60].map((b) => Math.fround(fromByte(b))));
  });

  it('rejects bad input with clear errors', () => {
    assert.throws(() => encodePng(new Float32Array(8), [2, 2, 2]), /1 \(grayscale\) or 3 \(RGB\) channels, got 2/);
    assert.throws(() => encodePng(new Float32Array(3), [1, 2, 2]), /3 values for a 1x2x2 image/);
    assert.throws(() => parsePngHeader(Buffer.from('GIF89a........................'), 'f.gif'), /f\.gif: not a PNG file/);
    const good = encodePng(onGrid(64, 1), [1, 8, 8]);
    assert.throws(() => decodePng(good.subarray(0, 40), { file: 'cut.png' }), /cut\.png: cannot decode PNG/);
    assert.throws(() => readPng(path.join(tmp, 'missing.png')), /cannot read .*missing\.png/);
  });

  it('writes files atomically and reads them back, header only or whole', async () => {
    const f = path.join(tmp, 'one.png');
    const x = onGrid(3 * 4 * 5, 9);
    await writePng(f, x, [3, 4, 5]);
    assert.deepEqual(readPngHeader(f), { width: 5, height: 4, bitDepth: 8, colorType: 2, channels: 3, alpha: false });
    assert.deepEqual([...readPng(f).data], [...x]);
  });

  it('tiles a batch into a grid with padding', () => {
    // 3 images of 1 x 2 x 2 with values on the byte grid, 2 per row, padding 1 of value 1.
    const imgs = Float32Array.from([0.0, 0.1, 0.2, 0.3, -0.1, -0.2, -0.3, -0.4, 0.5, 0.6, 0.7, 0.8]);
    const g = makeGrid({ data: imgs, shape: [3, 1, 2, 2] }, { nrow: 2, padding: 1, padValue: 1 });
    assert.deepEqual([g.channels, g.height, g.width], [1, 7, 7]);
    const at = (y: number, x: number) => g.data[y * 7 + x];
    assert.equal(at(0, 0), 1);
    assert.deepEqual([at(1, 1), at(1, 2), at(2, 1), at(2, 2)], [0.0, 0.1, 0.2, 0.3].map(Math.fround));
    assert.deepEqual([at(1, 4), at(1, 5), at(2, 4), at(2, 5)], [-0.1, -0.2, -0.3, -0.4].map(Math.fround));
    assert.deepEqual([at(4, 1), at(4, 2), at(5, 1), at(5, 2)], [0.5, 0.6, 0.7, 0.8].map(Math.fround));
    assert.deepEqual([at(4, 4), at(5, 5), at(3, 3)], [1, 1, 1]); // the empty cell and padding
  });

  it('saves grids and numbered images from tensors', async () => {
    const data = onGrid(4 * 3 * 6 * 6, 3);
    const t = fromArray(data, [4, 3, 6, 6]);
    const gf = path.join(tmp, 'sub', 'grid.png');
    await saveGrid(gf, t, { nrow: 2, padding: 2 });
    const g = readPng(gf);
    assert.deepEqual([g.channels, g.height, g.width], [3, 2 * 8 + 2, 2 * 8 + 2]);
    const files = await saveImages(path.join(tmp, 'samples'), t, { start: 10, prefix: 's' });
    assert.deepEqual(files.map((f) => path.basename(f)), ['s000010.png', 's000011.png', 's000012.png', 's000013.png']);
    assert.deepEqual([...readPng(files[2]).data], [...data.subarray(2 * 108, 3 * 108)]);
    t.dispose();
    const one = fromArray(data.subarray(0, 108), [3, 6, 6]);
    await writePng(path.join(tmp, 'tensor.png'), one);
    assert.deepEqual([...readPng(path.join(tmp, 'tensor.png')).data], [...data.subarray(0, 108)]);
    one.dispose();
    await assert.rejects(writePng(path.join(tmp, 'x.png'), [0, 0]), /shape \(C, H, W\) of the values is required/);
  });
});
