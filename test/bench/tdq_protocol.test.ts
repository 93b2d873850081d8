import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { type Cell, type Ledger, cellKey, checkSetup, readLedger, tableMarkdown, writeLedger } from '../../bench/tdq_protocol';

function ledger(): Ledger {
  const cells: Record<string, Cell> = {};
  const add = (method: string, bits: string, seed: number, fid: number) => {
    const c: Cell = { method, bits, steps: 25, seed, n: 1000, fid, seconds: 100, exec: 'int', finished: '2026-12-03T00:00:00Z' };
    cells[cellKey(c)] = c;
  };
  [30, 34, 32].forEach((f, s) => add('fp', 'FP', s, f));
  [40, 44, 42].forEach((f, s) => add('ptq-tdq', 'W8A5', s, f));
  [50, 55, 51].forEach((f, s) => add('ptq-minmax', 'W8A5', s, f));
  add('ptq-ptq4dm', 'W8A5', 0, 47);
  return { setup: { ckpt: 'm.safetensors', sha256: 'ab'.repeat(32), calibSamples: 16, calibSteps: 50, calibSeed: 1000, heldOutSeed: 2000, batch: 250, reference: 'train' }, cells };
}

describe('bench/tdq_protocol: ledger and table', () => {
  it('cell keys name every coordinate', () => {
    assert.equal(cellKey({ method: 'ptq-tdq', bits: 'W8A5', steps: 25, seed: 2, n: 2000 }), 'ptq-tdq|W8A5|ddim25|seed2|n2000');
  });
  it('the table has mean ± t interval per cell and paired differences on shared seeds', () => {
    const md = tableMarkdown(ledger());
    // t(0.975, 2) = 4.3027; sd of 40,44,42 is 2 -> half width 4.968
    assert.match(md, /\| ptq-tdq \| 42\.00 ± 4\.97 \(seeds 0,1,2\) \|/);
    assert.match(md, /\| FP \| 32\.00 ± 4\.97/);
    // diffs -10, -11, -9: mean -10, sd 1 -> half 2.48
    assert.match(md, /\| ptq-minmax \| -10\.00 ± 2\.48 \[-10\.00, -11\.00, -9\.00\] \|/);
    // one shared seed: no interval
    assert.match(md, /\| ptq-ptq4dm \| -7\.00 \[-7\.00\] \|/);
    assert.match(md, /22\.43/); // the paper's W8A5 numbers beside
  });
  it('ledgers round-trip; a broken one is a clear error', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-ledger-'));
    const f = path.join(dir, 'l.json');
    assert.equal(readLedger(f), null);
    writeLedger(f, ledger());
    assert.deepEqual(readLedger(f), ledger());
    fs.writeFileSync(f, '{"cells": 3');
    assert.throws(() => readLedger(f), /not a readable ledger/);
    fs.rmSync(dir, { recursive: true });
  });
});

describe('bench/tdq_protocol: setup check', () => {
  it('refuses cells of another checkpoint or calibration', () => {
    const s = ledger().setup;
    checkSetup(s, { ...s, ckpt: 'elsewhere/m.safetensors' }, 'x.json'); // same bytes, other path: fine
    assert.throws(() => checkSetup(s, { ...s, sha256: 'cd'.repeat(32) }, 'x.json'), /sha256/);
    assert.throws(() => checkSetup(s, { ...s, calibSamples: 32 }, 'x.json'), /calibSamples = 16, this run has 32/);
  });
});
