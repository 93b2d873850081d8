// `tdq-native eval --ckpt C --protocol` (issue 13): each seed's FID-FMNIST is
// the bench protocol cell's (bench/tdq_protocol.ts) for the same checkpoint,
// N, seed, steps and batch, bit for bit; a quantized checkpoint runs the
// integer path by default; bad values are clear errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { cellKey, protocolMain, readLedger } from '../../bench/tdq_protocol';
import { fmnistClassifierExists } from '../../src/eval/fmnist_classifier';
import { meanCI } from '../../src/eval/protocol';
import { parseSeeds } from '../../src/cli/commands/eval_protocol';
import { writeTinyFpAndTdqCheckpoints } from '../helpers/tiny_ckpts';
import { fmnistSkip } from '../helpers/datasets';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = path.join(ROOT, 'bin', 'tdq-native.js');
const SHIPPED = path.join(ROOT, 'models', 'fmnist-small.safetensors');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-eval-protocol-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const noFmnist = fmnistSkip();
const skip = noFmnist || (!fmnistClassifierExists() ? 'models/fmnist-classifier.safetensors is missing' : false) || (!fs.existsSync(SHIPPED) ? 'models/fmnist-small.safetensors is missing' : false);

function cli(args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

interface Report {
  protocol: { n: number; steps: number; batch: number; seeds: number[]; exec: string; sha256: string };
  cells: { seed: number; fid: number }[];
  fid: { mean: number; half: number | null; lo: number | null; hi: number | null };
}
const readReport = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8')) as Report;

describe('eval --protocol reproduces bench protocol cells', { skip }, () => {
  it('the shipped model: per-seed FID equals the bench cell bit for bit (N = 3 in batches of 2, DDIM 2, seeds 0 and 1)', async () => {
    const L = path.join(tmp, 'ledger.json');
    await protocolMain(['--ledger', L, '--ckpt', SHIPPED, '--methods', 'fp', '--bits', 'W8A8', '--eval-steps', '2', '--seeds', '0,1', '--n', '3', '--batch', '2']);
    const ledger = readLedger(L)!;
    const out = path.join(tmp, 'fp.json');
    const r = cli(['eval', '--ckpt', SHIPPED, '--protocol', '--n', '3', '--steps', '2', '--seeds', '0,1', '--sample-batch', '2', '--no-progress', '--out', out]);
    assert.equal(r.status, 0, r.err);
    const j = readReport(out);
    assert.deepEqual(j.protocol.seeds, [0, 1]);
    assert.equal(j.protocol.exec, 'fp32');
    assert.equal(j.protocol.sha256, ledger.setup.sha256);
    for (const seed of [0, 1]) {
      const cell = ledger.cells[cellKey({ method: 'fp', bits: 'FP', steps: 2, seed, n: 3 })];
      assert.ok(cell, `the bench made the seed-${seed} cell`);
      assert.equal(j.cells.find((c) => c.seed === seed)!.fid, cell.fid, `seed ${seed}: the CLI's FID is the bench cell's`);
      assert.match(r.out, new RegExp(`^seed ${seed}: FID-FMNIST ${cell.fid.toFixed(3)} `, 'm'));
    }
    // The two seeds differ (the noise is per seed), and the summary is meanCI of them.
    assert.notEqual(j.cells[0].fid, j.cells[1].fid);
    const ci = meanCI(j.cells.map((c) => c.fid));
    assert.equal(j.fid.mean, ci.mean);
    assert.equal(j.fid.half, ci.half);
    assert.match(r.out, new RegExp(`^mean FID-FMNIST ${ci.mean.toFixed(3)} ± ${ci.half.toFixed(3)} \\(95% interval`, 'm'));
    // One seed: no interval (null in the report).
    const one = path.join(tmp, 'one.json');
    const r1 = cli(['eval', '--ckpt', SHIPPED, '--protocol', '--n', '3', '--steps', '2', '--seeds', '1', '--sample-batch', '2', '--no-progress', '--out', one]);
    assert.equal(r1.status, 0, r1.err);
    assert.equal(readReport(one).cells[0].fid, j.cells[1].fid, 'a seed is the same cell whatever other seeds run');
    assert.equal(readReport(one).fid.half, null);
    assert.match(r1.out, /one seed: no interval/);
  });

  describe('a quantized checkpoint', () => {
    const q = path.join(tmp, 'q.safetensors'), fp = path.join(tmp, 'fp.safetensors');
    before(() => writeTinyFpAndTdqCheckpoints(fp, q));

    it('runs the integer path by default, as the bench cell of the same file does, bit for bit; --exec fake on request', async () => {
      const L = path.join(tmp, 'ledger-q.json');
      await protocolMain(['--ledger', L, '--ckpt', fp, '--methods', 'qat-file', '--qat-file', `file=${q}`, '--bits', 'W8A8', '--eval-steps', '2', '--seeds', '0', '--n', '3']);
      const cell = readLedger(L)!.cells[cellKey({ method: 'qat-file', bits: 'W8A8', steps: 2, seed: 0, n: 3 })];
      assert.equal(cell.exec, 'int');
      const out = path.join(tmp, 'q.json');
      const r = cli(['eval', '--ckpt', q, '--protocol', '--n', '3', '--steps', '2', '--seeds', '0', '--no-progress', '--out', out]);
      assert.equal(r.status, 0, r.err);
      assert.match(r.err, /quantized model, integer execution/);
      assert.equal(readReport(out).protocol.exec, 'int');
      assert.equal(readReport(out).cells[0].fid, cell.fid);
      const fake = path.join(tmp, 'q-fake.json');
      const f = cli(['eval', '--ckpt', q, '--protocol', '--exec', 'fake', '--n', '3', '--steps', '2', '--seeds', '0', '--no-progress', '--out', fake]);
      assert.equal(f.status, 0, f.err);
      assert.equal(readReport(fake).protocol.exec, 'fake');
      const bad = cli(['eval', '--ckpt', fp, '--protocol', '--exec', 'int', '--n', '3', '--steps', '2', '--seeds', '0', '--no-progress', '--out', path.join(tmp, 'x.json')]);
      assert.equal(bad.status, 1);
      assert.match(bad.err, /--exec int: .*fp\.safetensors is a full-precision checkpoint/);
    });
  });
});

describe('eval --protocol: bad values are clear errors', () => {
  const base = ['eval', '--ckpt', SHIPPED, '--protocol', '--no-progress'];
  const cases: [string[], RegExp][] = [
    [['--seeds', '0,x'], /--seeds: 'x' is not a non-negative integer/],
    [['--seeds', '0,-1'], /--seeds: '-1' is not a non-negative integer/],
    [['--seeds', '1,1'], /--seeds: seed 1 is given twice/],
    [['--seeds', '0,,2'], /--seeds expects comma-separated non-negative integers/],
    [['--n', '1'], /--n must be an integer >= 2 with --protocol/],
    [['--steps', '0'], /--steps must be a positive integer, got 0/],
    [['--steps', '2.5'], /--steps must be a positive integer, got 2\.5/],
    [['--sample-batch', '0'], /--sample-batch must be a positive integer, got 0/],
    [['--nproc', '2'], /--nproc 2 does not apply with --protocol: a protocol run samples in one process/],
    [['--sampler', 'plms'], /--sampler plms does not apply with --protocol/],
    [['--eta', '0.5'], /--eta 0.5 does not apply with --protocol/],
    [['--metrics', 'fid,kid'], /--metrics fid,kid does not apply with --protocol: protocol mode reports FID-FMNIST only/],
    [['--split', 'test'], /--split test does not apply with --protocol/],
    [['--sample-seed', '3'], /--sample-seed 3 does not apply with --protocol: give the protocol seeds with --seeds/],
  ];
  for (const [flags, want] of cases)
    it(flags.join(' '), () => {
      const r = cli([...base, ...flags]);
      assert.equal(r.status, 1, r.out);
      assert.match(r.err, want);
    });
  it('--steps beyond the schedule, --seeds without --protocol, --protocol without --ckpt', { skip: !fs.existsSync(SHIPPED) && 'models/fmnist-small.safetensors is missing' }, () => {
    const far = cli([...base, '--steps', '5000']);
    assert.equal(far.status, 1);
    assert.match(far.err, /--steps must be an integer in \[1, 1000\]/);
    const noProto = cli(['eval', '--ckpt', SHIPPED, '--seeds', '0,1', '--dataset', 'fashion-mnist']);
    assert.equal(noProto.status, 1);
    assert.match(noProto.err, /--seeds applies to --protocol only/);
    const noCkpt = cli(['eval', '--protocol', '--samples', tmp]);
    assert.equal(noCkpt.status, 1);
    assert.match(noCkpt.err, /--protocol needs --ckpt FILE/);
  });
  it('parseSeeds', () => {
    assert.deepEqual(parseSeeds('0,1,2'), [0, 1, 2]);
    assert.deepEqual(parseSeeds(' 7 '), [7]);
    assert.throws(() => parseSeeds(''), /--seeds expects/);
    assert.throws(() => parseSeeds('1e3'), /'1e3' is not a non-negative integer/);
  });
});
