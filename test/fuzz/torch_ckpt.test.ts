// Fuzzing the PyTorch checkpoint reader: byte mutations of torch 1.13
// checkpoints (zip and legacy: truncation, lying sizes and offsets in the zip
// directory and the pickles), mutations of data.pkl repacked in a valid zip
// (reaching the unpickler), random opcode soups, and hand-made deep nesting.
// The only outcomes allowed are a loaded checkpoint or a TorchCheckpointError
// naming the file, in bounded time and memory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { TorchCheckpointError, loadTorchCheckpoint } from '../../src/io/torch_ckpt';
import { P, f32bytes, pkl, storedZip, tensorPickle } from '../helpers/torch_ckpt';
import { type Outcome, cleanOutcome, corpusFiles, fc, fuzz, fuzzTmp, mutatedArb } from './helpers';

const FIX = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'torch');
const SEEDS = ['views.pt', 'legacy.pt', 'legacy_views.pt', 'hostile.pt', 'proto4.pt', 'dtypes.pt', 'lightning.ckpt', 'whole_module.pt'];

let dir: string;
let seeds: Uint8Array[] = [];
let pickles: { pkl: Uint8Array; storages: [string, Uint8Array][] }[] = [];
before(() => {
  dir = fuzzTmp('torch');
  seeds = [...SEEDS.map((f) => path.join(FIX, f)), ...corpusFiles('torch_ckpt')].map((f) => new Uint8Array(fs.readFileSync(f)));
  // data.pkl and storages of two zip seeds, to repack after mutating the pickle
  pickles = ['views.pt', 'dtypes.pt'].map((f) => unzipStored(fs.readFileSync(path.join(FIX, f))));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The entries of a stored zip (well-formed input only: a test helper). */
function unzipStored(b: Buffer): { pkl: Uint8Array; storages: [string, Uint8Array][] } {
  const eocd = b.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  let p = b.readUInt32LE(eocd + 16);
  const out: [string, Uint8Array][] = [];
  for (let i = 0; i < b.readUInt16LE(eocd + 10); ++i) {
    const size = b.readUInt32LE(p + 24), nl = b.readUInt16LE(p + 28), el = b.readUInt16LE(p + 30), cl = b.readUInt16LE(p + 32), lo = b.readUInt32LE(p + 42);
    const name = b.toString('utf8', p + 46, p + 46 + nl);
    const start = lo + 30 + b.readUInt16LE(lo + 26) + b.readUInt16LE(lo + 28);
    out.push([name.slice(name.indexOf('/') + 1), new Uint8Array(b.subarray(start, start + size))]);
    p += 46 + nl + el + cl;
  }
  return { pkl: out.find(([n]) => n === 'data.pkl')![1], storages: out.filter(([n]) => n.startsWith('data/')) };
}

function repack(pk: Uint8Array, storages: [string, Uint8Array][]): Uint8Array {
  return storedZip([['f/data.pkl', pk], ...storages.map(([n, b]) => [`f/${n}`, b] as [string, Uint8Array])]);
}

let counter = 0;
async function loadBytes(bytes: Uint8Array): Promise<Outcome> {
  const file = path.join(dir, `case-${counter++}.pt`);
  fs.writeFileSync(file, bytes);
  try {
    const o = await cleanOutcome(async () => {
      const ck = await loadTorchCheckpoint(file, { maxExpandedElements: 1 << 20 });
      const n = ck.tensors.size;
      ck.dispose();
      return n;
    }, [file], `torch case ${file}`);
    if (!o.ok) assert.ok(o.error instanceof TorchCheckpointError, `not a TorchCheckpointError: ${o.error.name}: ${o.error.message}`);
    return o;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

const OPCODES = [0x28, 0x2e, 0x30, 0x31, 0x32, 0x4e, 0x88, 0x89, 0x4b, 0x4d, 0x4a, 0x8a, 0x8b, 0x47, 0x58, 0x8c, 0x8d, 0x42, 0x43, 0x8e, 0x96, 0x29, 0x85, 0x86, 0x87, 0x74, 0x5d, 0x6c, 0x7d, 0x64, 0x8f, 0x91, 0x90, 0x61, 0x65, 0x73, 0x75, 0x71, 0x72, 0x94, 0x68, 0x6a, 0x52, 0x81, 0x92, 0x62, 0x51, 0x93, 0x95, 0x63, 0x69, 0x6f, 0x49, 0x46, 0x4c, 0x67, 0x70];
const token = fc.oneof(
  fc.constantFrom(...OPCODES).map((op) => [op]),
  fc.uint8Array({ minLength: 1, maxLength: 9 }).map((b) => [...b]),
  fc.constantFrom(P.global('torch._utils', '_rebuild_tensor_v2'), P.global('torch', 'FloatStorage'), P.global('collections', 'OrderedDict'), P.global('posix', 'system'), P.str('storage'), P.str('0'), P.str('cpu')),
);

describe('torch checkpoint reader under fuzzing', () => {
  it('mutated files (zip and legacy): loads or a TorchCheckpointError naming the file', async () => {
    const s = await fuzz(mutatedArb(seeds, 200), loadBytes);
    assert.ok(s.errors > 0, `some mutations must be refused (${JSON.stringify(s)})`);
  });

  it('mutated data.pkl in a valid zip: the unpickler refuses cleanly', async () => {
    const arb = fc.tuple(fc.nat({ max: pickles.length - 1 }), mutatedArb(pickles.map((p) => p.pkl), 64)).map(([i, pk]) => repack(pk, pickles[i].storages));
    const s = await fuzz(arb, loadBytes);
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('random opcode soups: a clean outcome every time', async () => {
    const arb = fc.array(token, { minLength: 1, maxLength: 60 }).map((ts) => repack(pkl(P.proto(2), ...ts, P.stop), [['data/0', f32bytes([1, 2, 3])]]));
    await fuzz(arb, loadBytes);
  });

  it('deep nesting and huge counts are bounded: lists, dicts, marks, memo indices', async () => {
    const N = 50_000;
    const cases: [string, Uint8Array][] = [
      // a list nested N deep: loads (the root is a list, not a dict: an error naming the file)
      ['lists', pkl(P.proto(2), new Array(N).fill(0x5d), new Array(N - 1).fill(0x61), P.stop)],
      // a dict nested N deep: the walk stops at maxDepth
      ['dicts', pkl(P.proto(2), new Array(N).fill([...P.emptyDict, 0x8c, 1, 0x6b]).flat(), P.emptyDict, P.str('w'), tensorPickle('FloatStorage', '0', 3, 0, [3], [1]), P.setitem, new Array(N).fill(0x73), P.stop)],
      ['marks', pkl(P.proto(2), new Array(N).fill(0x28), P.stop)],
      ['memo', pkl(P.proto(2), P.none, 0x72, 0xff, 0xff, 0xff, 0xff, 0x6a, 0xfe, 0xff, 0xff, 0xff, P.stop)],
      ['frame', pkl(P.proto(4), 0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, P.none, P.stop)],
      ['bytes8', pkl(P.proto(4), 0x8e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00, P.stop)],
      ['dups', pkl(P.proto(2), P.emptyList, new Array(N).fill([0x32, 0x61]).flat(), P.stop)],
    ];
    for (const [what, pk] of cases) {
      const o = await loadBytes(repack(pk, [['data/0', f32bytes([1, 2, 3])]]));
      assert.ok(!o.ok, `${what}: loaded`);
      if (what === 'dicts') assert.match(o.error.message, /nested deeper than 64/);
      if (what === 'marks') assert.match(o.error.message, /more than 10000 nested MARKs/);
      if (what === 'memo') assert.match(o.error.message, /memo index 4294967294 was never stored/);
      if (what === 'frame' || what === 'bytes8') assert.match(o.error.message, /frame of|needed/);
    }
  });

  it('lying zip directory fields: entry count, directory offset and size, entry sizes and offsets, zip64 records', async () => {
    const base = Buffer.from(seeds[0]);
    const eocd = base.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    const z64 = base.lastIndexOf(Buffer.from([0x50, 0x4b, 0x06, 0x06]));
    assert.ok(z64 > 0, 'torch 1.13 writes zip64 end records');
    const cd = base.readUInt32LE(eocd + 16);
    const edits: [number, number, 2 | 4 | 8][] = [
      [eocd + 12, 0xfffffff0, 4], [eocd + 16, 0xfffffff0, 4], [eocd + 16, 0, 4], [eocd - 12, 0xfffff, 4],
      [z64 + 32, 2 ** 40, 8], [z64 + 40, 2 ** 40, 8], [z64 + 48, 2 ** 52, 8], [z64 + 48, 3, 8],
      [cd + 20, 0x7fffffff, 4], [cd + 24, 0xfffffff0, 4], [cd + 42, 0xfffffff0, 4], [cd + 28, 0xffff, 2],
    ];
    for (const [at, v, width] of edits) {
      const b = Buffer.from(base);
      if (width === 8) b.writeBigUInt64LE(BigInt(v), at);
      else if (width === 4) b.writeUInt32LE(v, at);
      else b.writeUInt16LE(v, at);
      const o = await loadBytes(b);
      assert.ok(!o.ok, `edit at ${at} = ${v} loaded`);
    }
  });

  it('replays the kept corpus', async () => {
    const files = corpusFiles('torch_ckpt');
    assert.ok(files.length > 0, 'test/fuzz/corpus/torch_ckpt is empty');
    for (const f of files) await loadBytes(fs.readFileSync(f));
  });
});
