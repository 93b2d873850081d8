// Fuzzing PNG decoding and the image folder dataset: byte mutations of valid
// PNGs (bit flips, truncation, lying chunk lengths and IHDR sizes). decodePng
// may only return an image of the declared size or throw an Error naming the
// file; the dataset may only throw DataFileError (with .file) from its
// constructor or get(), in bounded time and memory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, describe, it } from 'node:test';

import { DataFileError } from '../../src/data/errors';
import { ImageFolderDataset } from '../../src/data/image_folder';
import { type FloatImage, decodePng, encodePng, rawDataLength } from '../../src/io/png';
import { type Outcome, cleanOutcome, corpusFiles, fc, fixPngCrcs, fuzz, fuzzTmp, mutatedArb, pngFile } from './helpers';

const dir = fuzzTmp('png');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const ramp = (n: number) => Float32Array.from({ length: n }, (_, i) => ((i * 37) % 255) / 127.5 - 1);
const seeds = [
  encodePng(ramp(64), [1, 8, 8]),
  encodePng(ramp(3 * 35), [3, 5, 7]),
  ...corpusFiles('png').map((f) => fs.readFileSync(f)),
].map((b) => new Uint8Array(b));
/** Mutated PNGs, half of them with their chunk CRCs repaired so the damage reaches inflate and unfiltering. */
const pngArb = fc.tuple(mutatedArb(seeds, 40), fc.boolean()).map(([b, fix]) => (fix ? fixPngCrcs(b) : b));
/** Keeps the fuzzer's allocations small: a mutated IHDR may claim any size. */
const MAX_PIXELS = 1 << 20;

async function decode(bytes: Uint8Array): Promise<Outcome> {
  const file = 'fuzz/case.png';
  const o = await cleanOutcome(() => decodePng(bytes, { file, maxPixels: MAX_PIXELS }), [file], 'decodePng');
  if (o.ok) {
    const img = o.value as FloatImage;
    assert.equal(img.data.length, img.channels * img.height * img.width);
    assert.ok(img.data.every((v) => v >= -1 && v <= 1), 'pixel values outside [-1, 1]');
  }
  return o;
}

let counter = 0;
async function folder(bytes: Uint8Array): Promise<Outcome> {
  const root = path.join(dir, `f${counter++}`);
  const file = path.join(root, 'img.png');
  fs.mkdirSync(root);
  fs.writeFileSync(file, bytes);
  try {
    const o = await cleanOutcome(() => {
      const ds = new ImageFolderDataset({ root, channels: 1, size: 8, convert: true, maxPixels: MAX_PIXELS });
      return ds.get(0);
    }, [file], 'image folder');
    if (!o.ok) {
      assert.ok(o.error instanceof DataFileError, `not a DataFileError: ${o.error.name}: ${o.error.message}`);
      assert.equal(o.error.file, file);
    }
    return o;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

describe('PNG decoding under fuzzing', () => {
  it('decodePng: an image of the declared size or an Error naming the file', async () => {
    const s = await fuzz(pngArb, decode, { ms: 2000 });
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('image folder dataset: opens and reads, or a DataFileError naming the file', async () => {
    const s = await fuzz(pngArb, folder, { ms: 2000, runs: 200 });
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('well-formed chunks around arbitrary scanlines: any header fields, filter bytes, lengths and interlacing', async () => {
    const arb = fc.record({
      width: fc.oneof(fc.integer({ min: 1, max: 12 }), fc.constantFrom(0, 1023, 4096)),
      height: fc.oneof(fc.integer({ min: 1, max: 12 }), fc.constantFrom(0, 1023)),
      colorType: fc.constantFrom(0, 2, 3, 4, 6, 1, 5),
      bitDepth: fc.constantFrom(1, 2, 4, 8, 16, 3, 0),
      interlace: fc.constantFrom(0, 0, 1, 2),
      plte: fc.option(fc.uint8Array({ minLength: 0, maxLength: 30 })),
      /** Scanline bytes: a pattern repeated to the length the header implies, give or take. */
      pattern: fc.uint8Array({ minLength: 1, maxLength: 40 }),
      delta: fc.constantFrom(0, 0, 0, -1, 1, -7),
      /** Bytes taken mod 5, so every filter byte is valid and decoding goes all the way. */
      validFilters: fc.boolean(),
    });
    const s = await fuzz(arb, (p) => {
      const want = [0, 2, 3, 4, 6].includes(p.colorType) && p.bitDepth > 0 ? rawDataLength(p, p.interlace === 1) : 50;
      const n = Math.max(0, Math.min(want + p.delta, 1 << 20));
      const raw = Buffer.alloc(n);
      for (let i = 0; i < n; ++i) raw[i] = p.pattern[i % p.pattern.length] % (p.validFilters ? 5 : 256);
      return decode(pngFile(p.width, p.height, zlib.deflateSync(raw), p.colorType, { bitDepth: p.bitDepth, interlace: p.interlace, plte: p.plte ?? undefined }));
    }, { ms: 2000 });
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('replays the kept corpus through both', async () => {
    for (const f of corpusFiles('png')) {
      const b = new Uint8Array(fs.readFileSync(f));
      await decode(b);
      await folder(b);
    }
  });
});
