// Fuzzing idx (MNIST-format) files, raw and gzip: lying dims, truncation,
// wrong magic, corrupt compressed data. readIdxFile may only return arrays
// matching their dims or throw an Error naming the file, in bounded time and
// memory (a header claiming 2^32 x 2^32 x 2^32 bytes allocates nothing).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, describe, it } from 'node:test';

import { IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, type IdxArray, IdxFormatError, readIdxFile } from '../../src/data/fashion_mnist';
import { type Outcome, cleanOutcome, corpusFiles, fc, fuzz, fuzzTmp, mutatedArb } from './helpers';

const dir = fuzzTmp('idx');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function idx(magic: number, dims: number[], data: Uint8Array): Uint8Array {
  const h = Buffer.alloc(4 + 4 * dims.length);
  h.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => h.writeUInt32BE(d, 4 + 4 * i));
  return new Uint8Array(Buffer.concat([h, data]));
}

const images = idx(IDX_IMAGES_MAGIC, [3, 4, 5], Uint8Array.from({ length: 60 }, (_, i) => i * 4));
const labels = idx(IDX_LABELS_MAGIC, [3], Uint8Array.from([9, 0, 4]));
const raw = [images, labels, ...corpusFiles('idx').map((f) => new Uint8Array(fs.readFileSync(f)))];

let counter = 0;
async function read(bytes: Uint8Array, gzip: boolean): Promise<Outcome> {
  const file = path.join(dir, `case-${counter++}${gzip ? '.gz' : ''}`);
  fs.writeFileSync(file, bytes);
  try {
    const magic = bytes.length >= 4 && !gzip && Buffer.from(bytes).readUInt32BE(0) === IDX_LABELS_MAGIC ? IDX_LABELS_MAGIC : IDX_IMAGES_MAGIC;
    const o = await cleanOutcome(() => readIdxFile(file, magic), [file], `idx ${file}`);
    if (o.ok) {
      const a = o.value as IdxArray;
      assert.equal(a.data.length, a.dims.reduce((x, y) => x * y, 1));
    } else {
      assert.ok(o.error instanceof IdxFormatError, `not an IdxFormatError: ${o.error.name}: ${o.error.message}`);
      assert.equal((o.error as IdxFormatError).file, file);
    }
    return o;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

describe('idx files under fuzzing', () => {
  it('raw: mutated headers and data give arrays matching their dims or a clear error', async () => {
    const s = await fuzz(mutatedArb(raw, 16), (b) => read(b, false), { ms: 1000 });
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('gzip: the same mutations before compressing, and mutations of the compressed bytes', async () => {
    const gz = raw.map((b) => new Uint8Array(zlib.gzipSync(b)));
    await fuzz(mutatedArb(raw, 16), (b) => read(new Uint8Array(zlib.gzipSync(b)), true), { ms: 1000 });
    await fuzz(mutatedArb(gz, 0), (b) => read(b, true), { ms: 1000 });
  });

  it('lying dims up to 2^32 - 1 per axis never allocate their claim', async () => {
    const lie = fc.tuple(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.boolean());
    await fuzz(lie, ([a, b, c, gzip]) => {
      const bytes = idx(IDX_IMAGES_MAGIC, [a, b, c], images.subarray(16));
      return read(gzip ? new Uint8Array(zlib.gzipSync(bytes)) : bytes, gzip);
    }, { ms: 1000 });
  });

  it('replays the kept corpus', async () => {
    for (const f of corpusFiles('idx')) {
      const b = new Uint8Array(fs.readFileSync(f));
      await read(b, b[0] === 0x1f && b[1] === 0x8b);
    }
  });
});
