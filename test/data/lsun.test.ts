// Pillow's resize and upstream LSUNBase's preprocessing, against fixtures that
// Pillow itself made (test/reference/pil_resize_ref.py).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { LsunDataset } from '../../src/data/lsun';
import { type PilFilter, pilResize } from '../../src/data/pil_resize';
import { encodePng } from '../../src/io/png';

const fixtures = path.join(__dirname, '..', '..', '..', 'test', 'fixtures', 'data');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-lsun-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface ResizeCase { c: number; h: number; w: number; outH: number; outW: number; src: number[]; out: Record<PilFilter, number[]> }

describe("Pillow's Image.resize", () => {
  const cases = JSON.parse(fs.readFileSync(path.join(fixtures, 'pil_resize.json'), 'utf8')) as ResizeCase[];
  for (const filter of ['bicubic', 'bilinear', 'lanczos'] as const) {
    it(`${filter}: equal to Pillow's output on shrinking, enlarging and mixed sizes`, () => {
      for (const k of cases) {
        const got = pilResize(Uint8Array.from(k.src), k.c, k.h, k.w, k.outH, k.outW, filter);
        const want = k.out[filter];
        // Lanczos evaluates sin(): the C library and V8 may differ in the last bit, so one level of slack there.
        const slack = filter === 'lanczos' ? 1 : 0;
        let worst = 0;
        for (let i = 0; i < want.length; ++i) worst = Math.max(worst, Math.abs(got[i] - want[i]));
        assert.equal(got.length, want.length);
        assert.ok(worst <= slack, `${k.c}x${k.h}x${k.w} -> ${k.outH}x${k.outW}: off by ${worst}`);
      }
    });
  }

  it('checks its sizes', () => {
    assert.throws(() => pilResize(new Uint8Array(5), 1, 2, 2, 1, 1), /bad sizes/);
  });
});

describe('LSUN-style data (LSUNBase)', () => {
  const root = path.join(fixtures, 'lsun');
  const expected = JSON.parse(fs.readFileSync(path.join(root, 'expected.json'), 'utf8')) as { size: number; files: string[]; images: number[][] };

  it('center crop, bicubic resize and [-1, 1] exactly as upstream', () => {
    const ds = new LsunDataset({ txtFile: path.join(root, 'files.txt'), dataRoot: root, size: expected.size });
    assert.equal(ds.length, 3);
    assert.deepEqual([ds.channels, ds.height, ds.width, ds.numClasses, ds.label(0)], [3, 8, 8, 0, -1]);
    expected.images.forEach((want, i) => assert.deepEqual(Array.from(ds.get(i)), Array.from(Float32Array.from(want)), expected.files[i]));
  });

  it('names what is wrong: a missing list, a blank line, a non-PNG, a missing or corrupt file', () => {
    const list = (name: string, text: string) => {
      const f = path.join(tmp, name);
      fs.writeFileSync(f, text);
      return f;
    };
    assert.throws(() => new LsunDataset({ txtFile: path.join(tmp, 'none.txt'), dataRoot: tmp, size: 8 }), /cannot read the file list .*none\.txt: ENOENT/);
    assert.throws(() => new LsunDataset({ txtFile: list('blank.txt', 'a.png\n\nb.png\n'), dataRoot: tmp, size: 8 }), /blank\.txt line 2 is empty/);
    assert.throws(() => new LsunDataset({ txtFile: list('webp.txt', 'x.webp\n'), dataRoot: tmp, size: 8 }), /line 1: .*x\.webp is not a PNG; only PNG is decoded/);
    assert.throws(() => new LsunDataset({ txtFile: list('missing.txt', 'nope.png\n'), dataRoot: tmp, size: 8 }), (e: Error & { file?: string }) => e.file === path.join(tmp, 'nope.png') && /line 1/.test(e.message));
    fs.writeFileSync(path.join(tmp, 'ok.png'), encodePng(new Float32Array(3 * 16).fill(0), [3, 4, 4]));
    fs.writeFileSync(path.join(tmp, 'bad.png'), Buffer.from('not a png at all'));
    assert.throws(() => new LsunDataset({ txtFile: list('bad.txt', 'ok.png\nbad.png\n'), dataRoot: tmp, size: 8 }), /bad\.png: unreadable image \(.*bad\.txt line 2\)/);
    assert.throws(() => new LsunDataset({ txtFile: list('ok.txt', 'ok.png\n'), dataRoot: tmp, size: 0 }), /size must be a positive integer/);
    assert.throws(() => new LsunDataset({ txtFile: list('ok2.txt', 'ok.png\n'), dataRoot: tmp, size: 8, interpolation: 'nearest' as never }), /interpolation must be one of/);
    assert.equal(new LsunDataset({ txtFile: list('ok3.txt', 'ok.png\n'), dataRoot: tmp, size: 8, interpolation: 'linear' }).get(0).length, 3 * 64);
  });
});
