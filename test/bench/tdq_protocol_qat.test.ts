// QAT cells of the protocol ledger (bench/tdq_protocol.ts) on a tiny model:
// a cell trains its QAT run, exports, samples and scores; an interrupted
// training run is resumed by the next sitting (and ends bit for bit where an
// uninterrupted one does); the ledger records the training seconds; the
// arguments go through util.parseArgs (unknown flags are errors).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { parseProtocolArgs, protocolMain, readLedger, tableMarkdown } from '../../bench/tdq_protocol';
import { parseTableArgs } from '../../bench/tdq_table';
import { inspectSafetensors } from '../../src/io/safetensors';
import { qatConfig, writeFpCheckpoint } from '../quant/qat_helpers';

// A stand-in for FID-FMNIST (the tiny model's 8x8 images do not fit the classifier): the mean pixel.
const fakeFid = async (_name: string, x0: Float32Array) => x0.reduce((s, v) => s + v, 0) / x0.length;

describe('bench/tdq_protocol: QAT cells', () => {
  let dir: string, fp: string;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-ledger-qat-'));
    fp = await writeFpCheckpoint(dir, qatConfig(4));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const args = (ledger: string, qatDir: string) => [
    '--ledger', ledger, '--ckpt', fp, '--methods', 'qat-tdq,qat-lsq-kd', '--bits', 'W3A3', '--seeds', '0', '--n', '4', '--batch', '4', '--eval-steps', '4',
    '--calib-samples', '2', '--calib-steps', '4', '--qat-steps', '4', '--qat-batch', '4', '--qat-warmup', '1', '--qat-dir', qatDir, '--table', `${ledger}.md`,
  ];

  it('trains, resumes an interrupted run exactly, exports, samples, scores and records the seconds', async () => {
    const L = path.join(dir, 'ledger.json'), Q = path.join(dir, 'qat');
    await protocolMain(args(L, Q), { fid: fakeFid, stopTrainingAt: 2 });
    const tdqRun = path.join(Q, 'qat-tdq-w3a3');
    assert.ok(fs.existsSync(path.join(tdqRun, 'checkpoints', 'step-00000002.safetensors')), 'the interrupted run has its checkpoint');
    assert.ok(!fs.existsSync(path.join(tdqRun, 'model.safetensors')));
    assert.deepEqual(readLedger(L)?.cells ?? {}, {}, 'no cell before its training ends');
    const firstSeconds = JSON.parse(fs.readFileSync(path.join(tdqRun, 'seconds.json'), 'utf8')).seconds as number;

    await protocolMain(args(L, Q), { fid: fakeFid });
    const l = readLedger(L)!;
    assert.deepEqual(Object.keys(l.cells).sort(), ['qat-lsq-kd|W3A3|ddim4|seed0|n4', 'qat-tdq|W3A3|ddim4|seed0|n4']);
    const c = l.cells['qat-tdq|W3A3|ddim4|seed0|n4'];
    assert.equal(c.qat?.run, tdqRun);
    assert.ok(c.qat!.trainSeconds! > firstSeconds, 'training seconds add up over the sittings');
    assert.ok(Number.isFinite(c.fid) && Number.isFinite(c.qat!.lastLoss));
    assert.equal(l.setup.qat?.steps, 4);
    // The log holds each step once: the second sitting continued the run.
    const steps = fs.readFileSync(path.join(tdqRun, 'log.jsonl'), 'utf8').trim().split('\n').map((x) => JSON.parse(x).step as number);
    assert.deepEqual(steps, [2, 4]); // logged every 4 steps, and at the stop
    const kdMeta = (await inspectSafetensors(path.join(Q, 'qat-lsq-kd-w3a3', 'checkpoints', 'step-00000004.safetensors'))).metadata ?? {};
    assert.equal(kdMeta.distill_weight, '1', 'the -kd cell distils');

    // The same cells uninterrupted: the same exported model, byte for byte.
    const L2 = path.join(dir, 'straight.json'), Q2 = path.join(dir, 'qat-straight');
    await protocolMain(args(L2, Q2), { fid: fakeFid });
    assert.deepEqual(fs.readFileSync(path.join(Q2, 'qat-tdq-w3a3', 'model.safetensors')), fs.readFileSync(path.join(tdqRun, 'model.safetensors')));
    assert.equal(readLedger(L2)!.cells['qat-tdq|W3A3|ddim4|seed0|n4'].fid, c.fid);

    // A rerun has nothing left to do; another QAT length is refused.
    await protocolMain(args(L, Q), { fid: async () => { throw new Error('nothing should be scored'); } });
    await assert.rejects(protocolMain([...args(L, Q), '--qat-steps', '8'], { fid: fakeFid }), /QAT cells were trained with steps = 4, this run has 8/);
    const md = tableMarkdown(l);
    assert.match(md, /QAT cells: 4 steps of batch 4/);
    assert.match(md, /\+\d+ QAT\)/);
    assert.match(md, /TDQ 6\.48/);
  });

  it('arguments: parseArgs, unknown flags and bad values are errors', () => {
    const a = parseProtocolArgs(['--ledger', 'x.json', '--methods', 'qat-tdq,qat-lsq', '--bits', 'w4a4,W3A3', '--qat-steps', '1500']);
    assert.deepEqual(a.bits, ['W4A4', 'W3A3']);
    assert.equal(a.qatSetup.steps, 1500);
    assert.equal(a.qatSetup.lr, 2e-4);
    assert.equal(a.qatDir, 'x-qat');
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--bogus']), /Unknown option '--bogus'/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--n', 'ten']), /--n: expected a non-negative integer, got 'ten'/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--qat-file', 'tdq=f.safetensors']), /qat-tdq is a method trained here/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--qat-distill-weight', '3']), /\[0, 1\]/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--qat-calib-method', 'best']), /--qat-calib-method: stats, auto/);
    assert.equal(parseProtocolArgs(['--ledger', 'x.json', '--qat-calib-method', 'auto', '--qat-tdq-init', 'fit']).qatSetup.tdqInit, 'fit');
    assert.throws(() => parseProtocolArgs([]), /--ledger FILE is required/);
    const t = parseTableArgs(['--settings', 'W4A4', '--qat', 'w4a4-tdq=a.safetensors', '--qat', 'w4a4-lsq=b.safetensors', '--no-fid']);
    assert.deepEqual(t.settings, [[4, 4]]);
    assert.equal(t.qat.size, 2);
    assert.equal(t.fid, false);
    assert.throws(() => parseTableArgs(['--steps']), /argument missing|requires|--steps/);
    assert.throws(() => parseTableArgs(['--qat', 'w4a4=x']), /--qat expects/);
  });
});
