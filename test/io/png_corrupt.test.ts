// decodePng on files with a valid header and bad data: each an Error naming
// the file, never black pixels in silence; a huge declared size is refused
// from the header before anything is inflated.
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { describe, it } from 'node:test';

import { decodePng, encodePng } from '../../src/io/png';
import { pngChunk, pngFile, PNG_SIGNATURE } from '../fuzz/helpers';

describe('decodePng: corrupt data', () => {
  it('garbage IDAT bytes (correct CRCs) are an error, not a black image', () => {
    assert.throws(() => decodePng(pngFile(8, 8, Buffer.from('definitely not zlib data')), { file: 'g.png' }),
      /^Error: g\.png: cannot decode PNG: corrupt pixel data \(zlib: /);
  });

  it('too little or too much pixel data for the declared size', () => {
    assert.throws(() => decodePng(pngFile(8, 8, zlib.deflateSync(Buffer.alloc(8 * 9 - 1))), { file: 's.png' }),
      /s\.png: cannot decode PNG: the pixel data holds 71 bytes, 8x8 needs 72/);
    assert.throws(() => decodePng(pngFile(8, 8, zlib.deflateSync(Buffer.alloc(1000))), { file: 'l.png' }),
      /l\.png: cannot decode PNG: more pixel data than 8x8 needs \(72 bytes\)/);
    assert.equal(decodePng(pngFile(8, 8, zlib.deflateSync(Buffer.alloc(72))), { file: 'ok.png' }).data.length, 64);
    // RGB: 3 bytes a pixel
    assert.equal(decodePng(pngFile(5, 3, zlib.deflateSync(Buffer.alloc(3 * 16)), 2), { file: 'rgb.png' }).data.length, 45);
  });

  it('a chunk whose length runs past the end, a missing IEND or IDAT', () => {
    const good = encodePng(new Float32Array(64), [1, 8, 8]);
    assert.throws(() => decodePng(good.subarray(0, good.length - 20), { file: 'cut.png' }), /cut\.png: cannot decode PNG: truncated: chunk "IDAT" at byte 33 declares \d+ bytes but \d+ remain/);
    const ihdr = good.subarray(8, 33);
    assert.throws(() => decodePng(Buffer.concat([PNG_SIGNATURE, ihdr, pngChunk('IEND', new Uint8Array(0))]), { file: 'n.png' }), /n\.png: cannot decode PNG: no image data/);
    assert.throws(() => decodePng(Buffer.concat([PNG_SIGNATURE, ihdr, pngChunk('IDAT', zlib.deflateSync(Buffer.alloc(72)))]), { file: 'e.png' }), /e\.png: cannot decode PNG: truncated \(no IEND chunk\)/);
  });

  it('a bit depth the color type does not allow is refused from the header', () => {
    const b = Buffer.from(pngFile(8, 8, zlib.deflateSync(Buffer.alloc(72)), 2));
    b[24] = 4; // RGB with 4-bit samples does not exist
    assert.throws(() => decodePng(b, { file: 'd.png' }), /d\.png: PNG color type 2 cannot have bit depth 4/);
  });

  it('a declared 20000x20000 is refused before inflating (maxPixels)', () => {
    const huge = pngFile(20000, 20000, zlib.deflateSync(Buffer.alloc(20001 * 16)));
    const rss0 = process.memoryUsage().rss;
    assert.throws(() => decodePng(huge, { file: 'h.png' }), /h\.png: PNG declares 20000x20000 = 400000000 pixels, more than the limit of 67108864 pixels/);
    assert.throws(() => decodePng(huge, { file: 'h.png', maxPixels: 1000 }), /more than the limit of 1000 pixels/);
    assert.ok(process.memoryUsage().rss - rss0 < 100 * 2 ** 20);
  });
});
