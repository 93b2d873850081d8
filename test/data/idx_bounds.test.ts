// idx files that lie: sizes checked against the header before reading,
// gzip never inflated past the header's claim, errors typed and naming the file.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, describe, it } from 'node:test';

import { DataFileError } from '../../src/data/errors';
import { IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, IdxFormatError, MAX_IDX_BYTES, readIdxFile } from '../../src/data/fashion_mnist';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-idxb-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function idx(magic: number, dims: number[], data: Uint8Array): Buffer {
  const h = Buffer.alloc(4 + 4 * dims.length);
  h.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => h.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([h, data]);
}

function put(name: string, b: Uint8Array): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, b);
  return f;
}

const data60 = Uint8Array.from({ length: 60 }, (_, i) => i);

function idxError(file: string, re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof IdxFormatError && e instanceof DataFileError, `${e}`);
    assert.equal(e.file, file);
    assert.ok(e.message.startsWith(`${file}: `), e.message);
    assert.match(e.message, re);
    return true;
  };
}

describe('idx files: bounded reading', () => {
  it('a raw header claiming more than the file holds is a truncation error naming the file', () => {
    const f = put('lie-raw', idx(IDX_IMAGES_MAGIC, [60000, 28, 28], data60));
    assert.throws(() => readIdxFile(f, IDX_IMAGES_MAGIC), idxError(f, /truncated: the header says 60000 x 28 x 28 \(47040000 bytes of data\) but only 60 bytes follow/));
  });

  it('a gzip header claiming 2^32-1 x 2^32-1 x 2^32-1 is refused before inflating', () => {
    const f = put('lie.gz', zlib.gzipSync(idx(IDX_IMAGES_MAGIC, [0xffffffff, 0xffffffff, 0xffffffff], data60)));
    assert.throws(() => readIdxFile(f, IDX_IMAGES_MAGIC), idxError(f, new RegExp(`4294967295 x 4294967295 x 4294967295 .* more than the limit of ${MAX_IDX_BYTES} bytes`)));
  });

  it('gzip data holding far more than the header says is never inflated whole', () => {
    // 3 x 4 x 5 claimed; 64 MiB of zeros follow (64 KiB compressed).
    const f = put('bomb.gz', zlib.gzipSync(Buffer.concat([idx(IDX_IMAGES_MAGIC, [3, 4, 5], data60), Buffer.alloc(64 * 2 ** 20)]), { level: 1 }));
    const rss0 = process.memoryUsage().rss;
    assert.throws(() => readIdxFile(f, IDX_IMAGES_MAGIC), idxError(f, /the gzip data holds more than the 3 x 4 x 5 \(60 bytes\) the header says/));
    assert.ok(process.memoryUsage().rss - rss0 < 32 * 2 ** 20, 'inflated no more than the claim');
  });

  it('a compressed file far larger than its header could need is refused unread', () => {
    // A second gzip member of 2 MiB of incompressible bytes.
    const noise = crypto.randomBytes(2 * 2 ** 20);
    const gz = zlib.gzipSync(idx(IDX_IMAGES_MAGIC, [3, 4, 5], data60));
    const f = put('padded.gz', Buffer.concat([gz, zlib.gzipSync(noise)]));
    assert.throws(() => readIdxFile(f, IDX_IMAGES_MAGIC), idxError(f, /bytes of gzip data, more than 3 x 4 x 5 \(60 bytes\) could compress to/));
  });

  it('the limit is an option; wrong magic and empty files name the file', () => {
    const f = put('ok', idx(IDX_IMAGES_MAGIC, [3, 4, 5], data60));
    assert.deepEqual(readIdxFile(f, IDX_IMAGES_MAGIC).dims, [3, 4, 5]);
    assert.throws(() => readIdxFile(f, IDX_IMAGES_MAGIC, { maxBytes: 59 }), idxError(f, /more than the limit of 59 bytes/));
    assert.throws(() => readIdxFile(f, IDX_LABELS_MAGIC), idxError(f, /bad magic number 2051 .* expected 2049 .*swapped/));
    const e = put('empty', new Uint8Array(0));
    assert.throws(() => readIdxFile(e, IDX_IMAGES_MAGIC), idxError(e, /only 0 bytes, too short/));
    const g = put('garbage.gz', Buffer.from([0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert.throws(() => readIdxFile(g, IDX_IMAGES_MAGIC), idxError(g, /cannot decompress gzip data/));
    assert.throws(() => readIdxFile(path.join(tmp, 'missing'), IDX_IMAGES_MAGIC), /idx file not found: .*missing/);
  });
});
