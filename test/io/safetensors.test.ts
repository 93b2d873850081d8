import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { SafetensorsError, inspectSafetensors, readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import type { TypedArray } from '../../src/tensor/native';
import { type Tensor, fromArray, runOp } from '../../src/tensor/tensor';

const PYTHON = process.env.TDQ_PYTHON ?? '/usr/bin/python3';
const numpyMissing = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import numpy'], { encoding: 'utf8' });
  return r.status === 0 ? null : `numpy unavailable (${PYTHON}): ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
})();

function python(script: string, args: string[]): string {
  const r = spawnSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

let dir: string;
before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'tdq-st-'))));
after(() => rmSync(dir, { recursive: true, force: true }));

function sample(): [string, Tensor, number[]][] {
  return [
    ['f32', fromArray([1.5, -2, 3.25, 0, 2 ** -70, -7], [2, 3]), [1.5, -2, 3.25, 0, 2 ** -70, -7]],
    // float16 travels as raw bits: 0x3c00 = 1, 0xc000 = -2, 0x7bff = 65504
    ['f16', fromArray([0x3c00, 0xc000, 0x7bff], [3], 'float16'), [0x3c00, 0xc000, 0x7bff]],
    ['i8', fromArray([-128, 0, 127, 5], [2, 2], 'int8'), [-128, 0, 127, 5]],
    ['u8', fromArray([0, 255, 7], [3], 'uint8'), [0, 255, 7]],
    ['i32', fromArray([-2147483648, 2147483647, 42], [3, 1], 'int32'), [-2147483648, 2147483647, 42]],
    ['scalar', fromArray([3], [], 'float32'), [3]],
    ['empty', fromArray([], [0, 4], 'float32'), []],
  ];
}

const same = (a: TypedArray, b: number[]) => assert.deepEqual(Array.from(a), b);

describe('safetensors round trips', () => {
  it('every engine dtype and the metadata survive a write and read', async () => {
    const file = path.join(dir, 'all.safetensors');
    const items = sample();
    await writeSafetensors(file, items.map(([k, t]) => [k, t] as [string, Tensor]), { format: 'pt', note: 'ünïcödé "quoted"', '0': 'numeric key' });
    const { tensors, metadata } = await readSafetensors(file);
    assert.deepEqual(metadata, { format: 'pt', note: 'ünïcödé "quoted"', '0': 'numeric key' });
    assert.deepEqual([...tensors.keys()], items.map(([k]) => k));
    for (const [k, t, values] of items) {
      const got = tensors.get(k)!;
      assert.equal(got.dtype, t.dtype, k);
      assert.deepEqual([...got.shape], [...t.shape], k);
      same(await got.data(), values);
    }
    // The data section starts 8-byte aligned; no temporary file is left behind.
    const raw = readFileSync(file);
    assert.equal((8 + Number(raw.readBigUInt64LE(0))) % 8, 0);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp')), []);
  });

  it('inspect reads only the header; filters select tensors by predicate or by name', async () => {
    const file = path.join(dir, 'filter.safetensors');
    await writeSafetensors(file, new Map(sample().map(([k, t]) => [k, t])));
    const h = await inspectSafetensors(file);
    assert.deepEqual(h.tensors.get('i32'), { dtype: 'I32', shape: [3, 1], dataOffsets: [h.tensors.get('i32')!.dataOffsets[0], h.tensors.get('i32')!.dataOffsets[0] + 12] });
    assert.equal(h.tensors.size, 7);
    const byFn = await readSafetensors(file, { filter: (k, e) => e.dtype === 'F32' && k !== 'empty' });
    assert.deepEqual([...byFn.tensors.keys()], ['f32', 'scalar']);
    const byName = await readSafetensors(file, { filter: ['u8', 'f16'] });
    assert.deepEqual([...byName.tensors.keys()], ['u8', 'f16']);
    await assert.rejects(readSafetensors(file, { filter: ['nope'] }), (e: Error) => e instanceof SafetensorsError && /no tensor named 'nope'/.test(e.message));
  });

  it('writing over a file replaces it whole; a failed write leaves the old file and no temporary file', async () => {
    const file = path.join(dir, 'replace.safetensors');
    await writeSafetensors(file, [['a', fromArray([1, 2], [2])]]);
    const gone = fromArray([5], [1]);
    gone.dispose();
    await assert.rejects(writeSafetensors(file, [['b', gone]]), /tensor 'b' has been disposed/);
    // A failure after the temporary file exists: a tensor disposed while the previous one is written.
    const first = fromArray(new Float32Array(1 << 16), [1 << 16]);
    const second = fromArray([1], [1]);
    const p = writeSafetensors(file, [['x', first], ['y', second]]);
    second.dispose();
    await assert.rejects(p, /disposed/);
    same(await (await readSafetensors(file)).tensors.get('a')!.data(), [1, 2]);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp')), []);
    await writeSafetensors(file, [['c', fromArray([3], [1])]]);
    assert.deepEqual([...(await readSafetensors(file)).tensors.keys()], ['c']);
  });

  it('snapshot writes the values as of the call, whatever is queued after it', async () => {
    const file = path.join(dir, 'snap.safetensors');
    const t = fromArray([1, 2, 3], [3]);
    const writing = writeSafetensors(file, [['t', t]], {}, { snapshot: true });
    runOp('copy_', [t, fromArray([9, 9, 9], [3])]); // an in-place update, like an optimizer step
    await writing;
    same(await (await readSafetensors(file)).tensors.get('t')!.data(), [1, 2, 3]);
    same(await t.data(), [9, 9, 9]);
  });

  it('bad arguments to write are refused before any file is made', async () => {
    const file = path.join(dir, 'never.safetensors');
    const t = fromArray([1], [1]);
    await assert.rejects(writeSafetensors(file, [['a', t], ['a', t]]), /'a' is given twice/);
    await assert.rejects(writeSafetensors(file, [['__metadata__', t]]), TypeError);
    await assert.rejects(writeSafetensors(file, [['a', t]], { k: 3 as unknown as string }), /metadata value 'k' must be a string/);
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('never') || f.includes('.tmp')), []);
  });
});

describe('safetensors interoperability with a numpy reader and writer', { skip: numpyMissing ?? false }, () => {
  // A reader and a writer of the format in a few lines of numpy (no safetensors package needed).
  const READER = `
import json, struct, sys, numpy as np
d = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', d[:8])[0]
h = json.loads(d[8:8 + n])
meta = h.pop('__metadata__', {})
dt = {'F32': '<f4', 'F16': '<f2', 'I8': 'i1', 'U8': 'u1', 'I32': '<i4'}
out = {}
for k, e in h.items():
    b, t = e['data_offsets']
    a = np.frombuffer(d[8 + n + b:8 + n + t], dtype=dt[e['dtype']]).reshape(e['shape'])
    out[k] = {'dtype': e['dtype'], 'shape': list(a.shape), 'values': a.astype(np.float64).ravel().tolist()}
print(json.dumps({'meta': meta, 'tensors': out}))
`;
  const WRITER = `
import json, struct, sys, numpy as np
x = np.array([[1.5, -2.25, 3.0], [0.0, 65504.0, -0.5]], dtype=np.float32)
xb = np.array([[1.5, -2.25, 3.0], [0.0, 65280.0, -0.5]], dtype=np.float32)
arrays = [
  ('w.f32', 'F32', x),
  ('w.f16', 'F16', x.astype(np.float16)),
  ('w.bf16', 'BF16', (xb.view(np.uint32) >> 16).astype(np.uint16)),  # exact: these values fit bfloat16
  ('w.f64', 'F64', x.astype(np.float64) / 3),
  ('idx.i64', 'I64', np.array([0, -5, 2**31 - 1], dtype=np.int64)),
  ('q.i8', 'I8', np.array([-128, 127], dtype=np.int8)),
  ('q.u8', 'U8', np.array([0, 255], dtype=np.uint8)),
  ('n.i32', 'I32', np.array([[7], [-9]], dtype=np.int32)),
  ('mask', 'BOOL', np.array([True, False, True])),
]
header, blobs, off = {'__metadata__': {'source': 'numpy'}}, [], 0
for name, dtype, a in arrays:
    raw = np.ascontiguousarray(a).tobytes()
    header[name] = {'dtype': dtype, 'shape': list(a.shape), 'data_offsets': [off, off + len(raw)]}
    blobs.append(raw)
    off += len(raw)
hb = json.dumps(header).encode()
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<Q', len(hb)) + hb + b''.join(blobs))
`;

  it('a file written here is read by numpy', async () => {
    const file = path.join(dir, 'to_numpy.safetensors');
    const items = sample();
    await writeSafetensors(file, items.map(([k, t]) => [k, t] as [string, Tensor]), { epoch: '3' });
    const got = JSON.parse(python(READER, [file])) as { meta: Record<string, string>; tensors: Record<string, { dtype: string; shape: number[]; values: number[] }> };
    assert.deepEqual(got.meta, { epoch: '3' });
    const f16 = got.tensors.f16;
    assert.deepEqual(f16.values, [1, -2, 65504]); // numpy decoded the float16 bits
    for (const [k, t, values] of items) {
      assert.deepEqual(got.tensors[k].shape, [...t.shape], k);
      if (k !== 'f16') assert.deepEqual(got.tensors[k].values, t.dtype === 'float32' ? values.map((v) => Math.fround(v)) : values, k);
    }
  });

  it('a file written by numpy is read here, converting BF16, F64, I64 and BOOL', async () => {
    const file = path.join(dir, 'from_numpy.safetensors');
    python(WRITER, [file]);
    const { tensors, metadata } = await readSafetensors(file);
    assert.deepEqual(metadata, { source: 'numpy' });
    const x = [1.5, -2.25, 3, 0, 65504, -0.5];
    const dtypes = Object.fromEntries([...tensors].map(([k, t]) => [k, `${t.dtype} [${t.shape.join(',')}]`]));
    assert.deepEqual(dtypes, {
      'w.f32': 'float32 [2,3]', 'w.f16': 'float16 [2,3]', 'w.bf16': 'float32 [2,3]', 'w.f64': 'float32 [2,3]',
      'idx.i64': 'int32 [3]', 'q.i8': 'int8 [2]', 'q.u8': 'uint8 [2]', 'n.i32': 'int32 [2,1]', mask: 'uint8 [3]',
    });
    same(await tensors.get('w.f32')!.data(), x);
    same(await tensors.get('w.f16')!.data(), [0x3e00, 0xc080, 0x4200, 0x0000, 0x7bff, 0xb800]);
    same(await tensors.get('w.bf16')!.data(), [1.5, -2.25, 3, 0, 65280, -0.5]);
    same(await tensors.get('w.f64')!.data(), x.map((v) => Math.fround(v / 3)));
    same(await tensors.get('idx.i64')!.data(), [0, -5, 2 ** 31 - 1]);
    same(await tensors.get('q.i8')!.data(), [-128, 127]);
    same(await tensors.get('q.u8')!.data(), [0, 255]);
    same(await tensors.get('n.i32')!.data(), [7, -9]);
    same(await tensors.get('mask')!.data(), [1, 0, 1]);
  });
});

describe('malformed safetensors files give clear errors', () => {
  /** A file from a header (object or raw string) and a data section. */
  function build(name: string, header: unknown, data: Uint8Array | number = 0, lengthOverride?: bigint): string {
    const hb = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(lengthOverride ?? BigInt(hb.length));
    const file = path.join(dir, name);
    writeFileSync(file, Buffer.concat([len, hb, typeof data === 'number' ? Buffer.alloc(data) : Buffer.from(data)]));
    return file;
  }

  async function expectError(file: string, pattern: RegExp, key?: string) {
    await assert.rejects(readSafetensors(file), (e: Error) => {
      assert.ok(e instanceof SafetensorsError, `not a SafetensorsError: ${e}`);
      assert.ok(e.message.includes(file), `message does not name the file: ${e.message}`);
      if (key) assert.ok(e.message.includes(`tensor '${key}'`), `message does not name the key: ${e.message}`);
      assert.match(e.message, pattern);
      return true;
    });
  }

  const f32 = (shape: number[], offs: [number, number]) => ({ dtype: 'F32', shape, data_offsets: offs });

  it('shorter than 8 bytes', async () => {
    const file = path.join(dir, 'short.safetensors');
    writeFileSync(file, Buffer.from([1, 2, 3]));
    await expectError(file, /3 bytes, shorter than the 8-byte header length/);
  });

  it('header length larger than the file', async () => {
    await expectError(build('hlen.safetensors', { a: f32([1], [0, 4]) }, 4, 10_000n), /header length 10000 is larger than the rest of the file/);
    await expectError(build('hlen2.safetensors', {}, 0, 2n ** 63n), /is larger than the rest of the file/);
  });

  it('header not JSON, or not an object', async () => {
    await expectError(build('json.safetensors', '{"a": {"dtype": "F32",'), /header is not valid UTF-8 JSON/);
    await expectError(build('array.safetensors', '[1, 2]'), /header must be a JSON object/);
    await expectError(build('meta.safetensors', { __metadata__: { a: 1 } }), /__metadata__ value 'a' must be a string/);
  });

  it('unknown dtype; a known but unloadable dtype only when selected', async () => {
    await expectError(build('dtype.safetensors', { w: { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }, 16), /unknown dtype "F128"/, 'w');
    const file = build('u16.safetensors', { a: f32([1], [0, 4]), w: { dtype: 'U16', shape: [2], data_offsets: [4, 8] } }, 8);
    await expectError(file, /dtype U16 is not supported/, 'w');
    assert.deepEqual([...(await readSafetensors(file, { filter: ['a'] })).tensors.keys()], ['a']);
  });

  it('bad shapes and offsets', async () => {
    await expectError(build('size.safetensors', { w: f32([2, 3], [0, 20]) }, 24), /span 20 bytes but shape \[2, 3\] of F32 needs 24/, 'w');
    await expectError(build('shape.safetensors', { w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4), /shape must be an array of non-negative integers/, 'w');
    await expectError(build('offs.safetensors', { w: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4), /data_offsets must be \[begin, end\]/, 'w');
    await expectError(build('overlap.safetensors', { a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, 12), /overlap those of 'a'/, 'b');
    await expectError(build('outside.safetensors', { a: f32([2], [0, 8]), b: f32([2], [8, 16]) }, 12), /extend past the end of the data section \(12 bytes\)/, 'b');
  });

  it('truncated data', async () => {
    const file = path.join(dir, 'trunc.safetensors');
    await writeSafetensors(file, [['a', fromArray([1, 2], [2])], ['b', fromArray([3, 4, 5], [3])]]);
    const size = readFileSync(file).length;
    truncateSync(file, size - 5);
    await expectError(file, /the file is truncated/, 'b');
  });

  it('the process lives on and reads good files after all of the above', async () => {
    const file = path.join(dir, 'fine.safetensors');
    await writeSafetensors(file, [['ok', fromArray([1], [1])]]);
    same(await (await readSafetensors(file)).tensors.get('ok')!.data(), [1]);
  });
});
