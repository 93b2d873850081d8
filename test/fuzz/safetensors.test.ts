// Fuzzing the safetensors reader: byte mutations of valid files (bit flips,
// truncation, lying header lengths) and header edits (offsets of 1e15, wrong
// types, deep nesting). The only outcomes allowed are loaded tensors or a
// SafetensorsError naming the file, within bounded time and memory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { SafetensorsError, readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { fromArray } from '../../src/tensor/tensor';
import { type Outcome, cleanOutcome, corpusFiles, fc, fuzz, fuzzTmp, mutatedArb } from './helpers';

let dir: string;
let seeds: Uint8Array[] = [];
before(async () => {
  dir = fuzzTmp('st');
  const seedFile = path.join(dir, 'seed.safetensors');
  const ts = [
    fromArray([1, 2, 3, 4, 5, 6], [2, 3]),
    fromArray([7, -8], [2], 'int32'),
    fromArray([1, 0, 1], [3], 'uint8'),
    fromArray([0.5], [], 'float16'),
  ];
  await writeSafetensors(seedFile, [['w', ts[0]], ['i', ts[1]], ['b', ts[2]], ['h', ts[3]]], { step: '3' });
  for (const t of ts) t.dispose();
  seeds = [new Uint8Array(fs.readFileSync(seedFile)), ...corpusFiles('safetensors').map((f) => new Uint8Array(fs.readFileSync(f)))];
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let counter = 0;
/** Writes the bytes to a fresh file, reads it, disposes what loaded; checks the outcome. */
async function readBytes(bytes: Uint8Array): Promise<Outcome> {
  const file = path.join(dir, `case-${counter++}.safetensors`);
  fs.writeFileSync(file, bytes);
  try {
    const o = await cleanOutcome(async () => {
      const r = await readSafetensors(file);
      for (const t of r.tensors.values()) t.dispose();
      return r.tensors.size;
    }, [file], `safetensors case ${file}`);
    if (!o.ok) assert.ok(o.error instanceof SafetensorsError, `not a SafetensorsError: ${o.error.name}: ${o.error.message}`);
    return o;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** A file with the given header text and data bytes. */
function withHeader(json: string, data: Uint8Array): Uint8Array {
  const h = Buffer.from(json, 'utf8');
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(h.length));
  return new Uint8Array(Buffer.concat([n, h, data]));
}

function splitSeed(seed: Uint8Array): { header: Record<string, unknown>; data: Uint8Array } {
  const b = Buffer.from(seed);
  const n = Number(b.readBigUInt64LE(0));
  return { header: JSON.parse(b.toString('utf8', 8, 8 + n)), data: b.subarray(8 + n) };
}

const NEST = '@@NEST@@';
const weird = fc.oneof(
  fc.constantFrom(1e15, 2 ** 53, 2 ** 64, -1, -0, 1.5, 0, null, true, '', 'F32', [], {}, [1e15], [0, 1e15], [1e15, 1e15 + 8], [-8, 0], [0, 2 ** 53 + 2]),
  fc.integer(),
  fc.string({ maxLength: 6 }),
  fc.array(fc.oneof(fc.integer({ min: -2, max: 2 ** 31 }), fc.constant(1e15)), { maxLength: 5 }),
  fc.constant(NEST),
);

const headerEdit = fc.record({
  key: fc.constantFrom('w', 'i', 'b', 'h', '__metadata__', 'new'),
  field: fc.constantFrom('dtype', 'shape', 'data_offsets', '(entry)', 'step'),
  value: weird,
  depth: fc.integer({ min: 1, max: 200_000 }),
});

describe('safetensors reader under fuzzing', () => {
  it('mutated bytes: loads or throws a SafetensorsError naming the file', async () => {
    const s = await fuzz(mutatedArb(seeds, 160), readBytes);
    assert.ok(s.errors > 0, `some mutations must be refused (${JSON.stringify(s)})`);
  });

  it('edited headers (huge offsets, wrong types, deep nesting): loads or a clear error, bounded memory', async () => {
    const { header, data } = splitSeed(seeds[0]);
    await fuzz(fc.array(headerEdit, { minLength: 1, maxLength: 3 }), async (edits) => {
      const h = structuredClone(header) as Record<string, Record<string, unknown>>;
      let nest = 1;
      for (const e of edits) {
        if (e.value === NEST) nest = e.depth;
        if (e.field === '(entry)' || e.key === 'new') h[e.key] = e.value as Record<string, unknown>;
        else if (h[e.key] && typeof h[e.key] === 'object') h[e.key][e.field] = e.value;
      }
      const json = JSON.stringify(h).replace(JSON.stringify(NEST), '['.repeat(nest) + ']'.repeat(nest));
      return readBytes(withHeader(json, data));
    });
  });

  it('a header claiming 1e15 bytes of data fails at once, allocating nothing', async () => {
    const { header, data } = splitSeed(seeds[0]);
    const big = { ...header, w: { dtype: 'U8', shape: [1e15], data_offsets: [0, 1e15] } };
    const o = await readBytes(withHeader(JSON.stringify(big), data));
    assert.ok(!o.ok && /extend past the end of the data section/.test(o.error.message), o.ok ? 'loaded' : o.error.message);
    const len = Buffer.from(seeds[0]);
    len.writeBigUInt64LE(10n ** 15n);
    const o2 = await readBytes(len);
    assert.ok(!o2.ok && /header length 1000000000000000 is larger than the rest of the file/.test(o2.error.message));
  });

  it('replays the kept corpus', async () => {
    const files = corpusFiles('safetensors');
    assert.ok(files.length > 0, 'test/fuzz/corpus/safetensors is empty');
    for (const f of files) await readBytes(fs.readFileSync(f));
  });
});
