import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { ImageFolderDataset, listPngFiles } from '../../src/data/image_folder';
import { encodePng, fromByte } from '../../src/io/png';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-imgdir-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A (C, H, W) image whose values sit on the byte grid, so PNG round trips are exact. */
function image(c: number, h: number, w: number, seed: number): Float32Array {
  return Float32Array.from({ length: c * h * w }, (_, i) => fromByte((i * 29 + seed * 53) % 256));
}

function write(file: string, c: number, h: number, w: number, seed: number): Float32Array {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const x = image(c, h, w, seed);
  fs.writeFileSync(file, encodePng(x, [c, h, w]));
  return x;
}

describe('ImageFolderDataset', () => {
  it('finds PNGs recursively in a stable order, skipping dot files and other extensions', () => {
    const root = path.join(tmp, 'tree');
    write(path.join(root, 'b.png'), 1, 4, 4, 1);
    write(path.join(root, 'a', 'z.PNG'), 1, 4, 4, 2);
    write(path.join(root, 'a', 'deep', 'y.png'), 1, 4, 4, 3);
    write(path.join(root, '.hidden', 'x.png'), 1, 4, 4, 4);
    fs.writeFileSync(path.join(root, 'notes.txt'), 'hello');
    const rel = listPngFiles(root).map((p) => path.relative(root, p));
    assert.deepEqual(rel, [path.join('a', 'deep', 'y.png'), path.join('a', 'z.PNG'), 'b.png']);
  });

  it('reads grayscale and RGB images at their size exactly', () => {
    const root = path.join(tmp, 'exact');
    const g = write(path.join(root, 'g', '0.png'), 1, 5, 6, 7);
    const ds = new ImageFolderDataset({ root: path.join(root, 'g'), channels: 1, size: [5, 6] });
    assert.deepEqual([...ds.get(0)], [...g]);
    const rgb = write(path.join(root, 'c', '0.png'), 3, 4, 3, 8);
    const ds3 = new ImageFolderDataset({ root: path.join(root, 'c'), channels: 3, size: [4, 3] });
    assert.deepEqual([...ds3.get(0)], [...rgb]);
    assert.equal(ds3.label(0), -1);
    assert.equal(ds3.numClasses, 0);
  });

  it('center-crops and resizes to the model size', () => {
    const root = path.join(tmp, 'crop');
    // 8 x 4 image: the centered 4 x 4 box (rows 2..5), area-averaged to 2 x 2.
    const x = write(path.join(root, 'a.png'), 1, 8, 4, 9);
    const ds = new ImageFolderDataset({ root, channels: 1, size: 2, fit: { mode: 'crop', interpolation: 'area' } });
    const out = ds.get(0);
    const mean = (y0: number, x0: number) => (x[y0 * 4 + x0] + x[y0 * 4 + x0 + 1] + x[(y0 + 1) * 4 + x0] + x[(y0 + 1) * 4 + x0 + 1]) / 4;
    const want = [mean(2, 0), mean(2, 2), mean(4, 0), mean(4, 2)];
    for (let i = 0; i < 4; ++i) assert.ok(Math.abs(out[i] - want[i]) < 1e-5, `${out[i]} vs ${want[i]}`);
  });

  it('labels images by class subfolder', () => {
    const root = path.join(tmp, 'classes');
    write(path.join(root, 'dog', '1.png'), 3, 4, 4, 1);
    write(path.join(root, 'cat', '1.png'), 3, 4, 4, 2);
    write(path.join(root, 'cat', '2.png'), 3, 4, 4, 3);
    const ds = new ImageFolderDataset({ root, channels: 3, size: 4, classDirs: true });
    assert.deepEqual(ds.classNames, ['cat', 'dog']);
    assert.equal(ds.numClasses, 2);
    assert.deepEqual([0, 1, 2].map((i) => ds.label(i)), [0, 0, 1]);
    write(path.join(root, 'loose.png'), 3, 4, 4, 4);
    assert.throws(() => new ImageFolderDataset({ root, channels: 3, size: 4, classDirs: true }), /loose\.png is not inside a class subfolder/);
  });

  it('rejects a channel mismatch naming the file, or converts on request', () => {
    const root = path.join(tmp, 'mixed');
    write(path.join(root, 'a.png'), 1, 4, 4, 1);
    const rgb = write(path.join(root, 'b.png'), 3, 4, 4, 2);
    assert.throws(() => new ImageFolderDataset({ root, channels: 1, size: 4 }), (e: Error) => {
      assert.ok(e.message.includes(path.join(root, 'b.png')), e.message);
      assert.match(e.message, /is RGB but the model takes 1 channel/);
      assert.match(e.message, /convert: true/);
      return true;
    });
    const ds = new ImageFolderDataset({ root, channels: 1, size: 4, convert: true });
    const y = ds.get(1);
    const luma = (i: number) => {
      const b = (v: number) => Math.round((v + 1) * 127.5);
      return fromByte(0.299 * b(rgb[i]) + 0.587 * b(rgb[16 + i]) + 0.114 * b(rgb[32 + i]));
    };
    for (let i = 0; i < 16; ++i) assert.ok(Math.abs(y[i] - luma(i)) < 1e-6);
    // Gray to RGB replicates the channel.
    const ds3 = new ImageFolderDataset({ root, channels: 3, size: 4, convert: true });
    const g = ds3.get(0);
    assert.deepEqual([...g.subarray(0, 16)], [...g.subarray(32, 48)]);
  });

  it('fails clearly on an empty folder, a missing folder and unreadable images', () => {
    const empty = path.join(tmp, 'empty');
    fs.mkdirSync(path.join(empty, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(empty, 'sub', 'x.jpg'), 'jpeg');
    assert.throws(() => new ImageFolderDataset({ root: empty, channels: 1, size: 4 }), /has no \*\.png files/);
    assert.throws(() => new ImageFolderDataset({ root: path.join(tmp, 'nope'), channels: 1, size: 4 }), /image folder not found/);

    const bad = path.join(tmp, 'bad');
    write(path.join(bad, 'a.png'), 1, 4, 4, 1);
    fs.writeFileSync(path.join(bad, 'b.png'), 'this is not a png');
    assert.throws(() => new ImageFolderDataset({ root: bad, channels: 1, size: 4 }), (e: Error) => {
      assert.ok(e.message.includes(path.join(bad, 'b.png')), e.message);
      assert.match(e.message, /unreadable image.*not a PNG file/);
      return true;
    });

    // A valid header with a cut-off end fails when the dataset opens, naming it.
    const corrupt = path.join(tmp, 'corrupt');
    fs.mkdirSync(corrupt);
    const png = encodePng(image(1, 16, 16, 1), [1, 16, 16]);
    fs.writeFileSync(path.join(corrupt, 'c.png'), png.subarray(0, 45));
    assert.throws(() => new ImageFolderDataset({ root: corrupt, channels: 1, size: 16 }), (e: Error) => {
      assert.ok(e.message.includes(path.join(corrupt, 'c.png')), e.message);
      assert.match(e.message, /unreadable image/);
      return true;
    });
  });

  it('caches decoded images when asked', () => {
    const root = path.join(tmp, 'cache');
    const x = write(path.join(root, 'a.png'), 1, 4, 4, 3);
    const ds = new ImageFolderDataset({ root, channels: 1, size: 4, cache: true });
    assert.deepEqual([...ds.get(0)], [...x]);
    fs.rmSync(path.join(root, 'a.png'));
    assert.deepEqual([...ds.get(0)], [...x]); // served from memory
  });
});
