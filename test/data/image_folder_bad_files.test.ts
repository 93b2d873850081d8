// Bad PNG files in an image folder: a declared size over the pixel limit is
// refused from the header (before decoding, allocating nothing), a truncated
// file when the dataset opens, corrupt pixel data when the sample is read;
// each as a DataFileError naming the file, which the loader passes on.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, describe, it } from 'node:test';

import { DataFileError, DataLoader, ImageFolderDataset, defaultMaxPixels } from '../../src/data';
import { DEFAULT_MAX_PNG_PIXELS, decodePng, encodePng, readPng } from '../../src/io/png';
import { pngFile } from '../fuzz/helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-badpng-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function folder(name: string, files: Record<string, Uint8Array>): string {
  const root = path.join(tmp, name);
  fs.mkdirSync(root, { recursive: true });
  for (const [n, b] of Object.entries(files)) fs.writeFileSync(path.join(root, n), b);
  return root;
}

const good = (v = 0) => encodePng(new Float32Array(64).fill(v), [1, 8, 8]);
/** A tiny file whose IHDR says 20000 x 20000: its (all-zero) rows would inflate to 400 MB, RGBA 1.6 GB. */
const huge = () => pngFile(20000, 20000, zlib.deflateSync(Buffer.alloc(20001 * 4)));

function isDataFileError(file: string, re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof DataFileError, `not a DataFileError: ${e}`);
    assert.equal(e.file, file);
    assert.ok(e.message.startsWith(`${file}: `), e.message);
    assert.match(e.message, re);
    return true;
  };
}

describe('image folder: bad files', () => {
  it('refuses a PNG declaring 20000x20000 from its header, naming file, size and limit, without decoding', () => {
    const root = folder('huge', { 'a.png': good(), 'big.png': huge() });
    const file = path.join(root, 'big.png');
    const rss0 = process.memoryUsage().rss;
    assert.throws(() => new ImageFolderDataset({ root, channels: 1, size: 8 }),
      isDataFileError(file, new RegExp(`declares 20000x20000 = 400000000 pixels, more than the limit of ${defaultMaxPixels(8, 8)} pixels`)));
    assert.throws(() => decodePng(fs.readFileSync(file), { file }), new RegExp(`declares 20000x20000 .* limit of ${DEFAULT_MAX_PNG_PIXELS} pixels`));
    assert.throws(() => readPng(file), /declares 20000x20000/);
    assert.ok(process.memoryUsage().rss - rss0 < 200 * 2 ** 20, 'refused without a large allocation');
    // The limit can be lowered (or raised) per dataset.
    const small = folder('small-limit', { 'a.png': good() });
    assert.throws(() => new ImageFolderDataset({ root: small, channels: 1, size: 8, maxPixels: 63 }), /8x8 = 64 pixels, more than the limit of 63/);
    assert.equal(new ImageFolderDataset({ root: small, channels: 1, size: 8, maxPixels: 64 }).length, 1);
  });

  it('the default limit grows with the model size', () => {
    assert.equal(defaultMaxPixels(32, 32), DEFAULT_MAX_PNG_PIXELS);
    assert.equal(defaultMaxPixels(4096, 4096), 16 * 4096 * 4096);
  });

  it('a truncated PNG fails when the dataset opens', () => {
    const root = folder('trunc', { 'a.png': good(), 'cut.png': good().subarray(0, 60) });
    assert.throws(() => new ImageFolderDataset({ root, channels: 1, size: 8 }),
      isDataFileError(path.join(root, 'cut.png'), /unreadable image: truncated PNG \(60 bytes, no IEND chunk at the end\)/));
  });

  it('garbage pixel data (valid header and chunks) is a DataFileError from get(), and through the loader', () => {
    const root = folder('garbage', { 'a.png': good(-1), 'b.png': pngFile(8, 8, Buffer.from('definitely not zlib data')), 'c.png': good(1) });
    const ds = new ImageFolderDataset({ root, channels: 1, size: 8 });
    assert.equal(ds.length, 3);
    const file = path.join(root, 'b.png');
    assert.throws(() => ds.get(1), isDataFileError(file, /unreadable image: cannot decode PNG: /));
    assert.equal(ds.get(0)[0], -1);
    const loader = new DataLoader(ds, { batchSize: 3, shuffle: false });
    const before = loader.state();
    assert.throws(() => loader.nextArrays(), (e: unknown) => {
      isDataFileError(file, /cannot decode PNG/)(e);
      assert.equal((e as DataFileError).index, 1);
      return true;
    });
    assert.deepEqual(loader.state(), before, 'a failed batch does not advance the loader');
  });

  it('the loader names the dataset and sample of any other failure, keeping the cause', () => {
    const cause = new RangeError('boom');
    const ds = { name: 'flaky', length: 2, channels: 1, height: 1, width: 1, numClasses: 0, get: () => { throw cause; }, label: () => -1 };
    const loader = new DataLoader(ds, { batchSize: 1, shuffle: false });
    assert.throws(() => loader.nextArrays(), (e: Error) => /^flaky: cannot load sample 0: boom$/.test(e.message) && e.cause === cause);
    const ds2 = { ...ds, get: () => { throw 'a string'; } }; // eslint-disable-line no-throw-literal
    assert.throws(() => new DataLoader(ds2, { batchSize: 1 }).nextArrays(), (e: Error) => e instanceof Error && /cannot load sample \d: a string/.test(e.message));
  });
});
