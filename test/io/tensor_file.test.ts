// openTensorFile (src/io/checkpoint_file.ts): a checkpoint's tensors listed
// from the headers and read one at a time through one reused buffer, for
// torch files (zip and legacy, strided views) and safetensors; and
// writeSafetensorsStream, the streamed writer under writeSafetensors and convert.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { openTensorFile } from '../../src/io/checkpoint_file';
import { readSafetensors, writeSafetensors, writeSafetensorsStream } from '../../src/io/safetensors';
import { loadTorchCheckpoint } from '../../src/io/torch_ckpt';
import { fromArray } from '../../src/tensor/tensor';

const root = path.resolve(__dirname, '..', '..', '..');
const FIX = path.join(root, 'test', 'fixtures', 'torch');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-tensor-file-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('openTensorFile', () => {
  for (const name of ['dtypes.pt', 'views.pt', 'legacy_views.pt', 'lightning.ckpt']) {
    it(`${name}: entries as loadTorchCheckpoint loads them; reads (concurrent ones too) give the same values`, async () => {
      const file = path.join(FIX, name);
      const ck = await loadTorchCheckpoint(file);
      const tf = await openTensorFile(file);
      try {
        assert.deepEqual([...tf.entries.keys()], [...ck.tensors.keys()]);
        for (const [k, t] of ck.tensors) {
          const e = tf.entries.get(k)!;
          assert.equal(e.name, k);
          assert.equal(e.dtype, t.dtype, k);
          assert.deepEqual(e.shape, [...t.shape], k);
        }
        // all at once: reads share one buffer, so they must run one at a time
        const got = await Promise.all([...ck.tensors.keys()].map((k) => tf.read(k)));
        [...ck.tensors].forEach(([k, t], i) => {
          assert.deepEqual(Array.from(got[i].dataSync() as ArrayLike<number>), Array.from(t.dataSync() as ArrayLike<number>), k);
          got[i].dispose();
        });
        await assert.rejects(tf.read('no.such.key'), /no tensor 'no\.such\.key'/);
      } finally {
        await tf.close();
        ck.dispose();
      }
    });
  }

  it('a .safetensors: entries, metadata and values as readSafetensors gives them', async () => {
    const file = path.join(tmp, 'a.safetensors');
    const a = fromArray([1, 2, 3, 4, 5, 6], [2, 3]), b = fromArray([7, -8], [2], 'int32');
    await writeSafetensors(file, new Map([['a', a], ['b', b]]), { note: 'x' });
    const tf = await openTensorFile(file);
    try {
      assert.deepEqual([...tf.entries.values()], [
        { name: 'a', dtype: 'float32', shape: [2, 3], bytes: 24 },
        { name: 'b', dtype: 'int32', shape: [2], bytes: 8 },
      ]);
      assert.deepEqual(tf.metadata, { note: 'x' });
      const [ra, rb] = await Promise.all([tf.read('a'), tf.read('b')]);
      assert.deepEqual(Array.from(ra.dataSync() as Float32Array), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(Array.from(rb.dataSync() as Int32Array), [7, -8]);
      ra.dispose();
      rb.dispose();
      await assert.rejects(tf.read('c'), /tensor 'c': no such tensor/);
    } finally {
      await tf.close();
      a.dispose();
      b.dispose();
    }
    await assert.rejects(tf.read('a'), /closed/);
  });
});

describe('writeSafetensorsStream', () => {
  it('writes what next(i) gives, in order; a wrong byte count is an error naming the tensor, and no file is left', async () => {
    const file = path.join(tmp, 's.safetensors');
    const specs = [{ name: 'x', dtype: 'float32' as const, shape: [3] }, { name: 'y', dtype: 'uint8' as const, shape: [2] }];
    const calls: number[] = [];
    await writeSafetensorsStream(file, specs, { m: '1' }, async (i) => {
      calls.push(i);
      return i === 0 ? new Uint8Array(Float32Array.from([1, 2, 3]).buffer) : Uint8Array.from([9, 8]);
    });
    assert.deepEqual(calls, [0, 1]);
    const r = await readSafetensors(file);
    assert.deepEqual(Array.from(r.tensors.get('x')!.dataSync() as Float32Array), [1, 2, 3]);
    assert.deepEqual(Array.from(r.tensors.get('y')!.dataSync() as Uint8Array), [9, 8]);
    assert.deepEqual(r.metadata, { m: '1' });
    for (const t of r.tensors.values()) t.dispose();

    const bad = path.join(tmp, 'bad.safetensors');
    await assert.rejects(writeSafetensorsStream(bad, specs, {}, async () => new Uint8Array(5)), /tensor 'x' gave 5 bytes, expected 12/);
    assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.includes('bad')), []);
    await assert.rejects(writeSafetensorsStream(bad, [specs[0], specs[0]], {}, async () => new Uint8Array(12)), /'x' is given twice/);
  });
});
