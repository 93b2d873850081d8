// eval --ckpt of a quantized checkpoint: --exec int|fake (default as sample's),
// recorded in the report; the library's checkpointSource does the same.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { checkpointSource } from '../../src/eval/run';
import { fmnistClassifierExists } from '../../src/eval/fmnist_classifier';
import { writeTinyFpAndTdqCheckpoints } from '../helpers/tiny_ckpts';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-eval-exec-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

describe('eval --exec', { skip: fmnistClassifierExists() ? false : 'models/fmnist-classifier.safetensors is missing' }, () => {
  const q = path.join(tmp, 'q.safetensors'), fp = path.join(tmp, 'fp.safetensors');
  before(() => writeTinyFpAndTdqCheckpoints(fp, q));

  it('the CLI runs int by default, fake on request, says so and records it; --exec is an error for a float checkpoint and with --samples', () => {
    const common = ['--n', '4', '--steps', '2', '--batch-size', '4', '--metrics', 'is', '--feature-net', 'fmnist', '--is-splits', '1', '--no-progress'];
    for (const [flag, exec, says] of [[[], 'int', 'integer'], [['--exec', 'fake'], 'fake', 'fake-quantized'], [['--exec', 'int'], 'int', 'integer']] as const) {
      const out = path.join(tmp, `r-${flag.join('')}.json`);
      const r = cli(['eval', '--ckpt', q, ...flag, ...common, '--out', out]);
      assert.equal(r.status, 0, r.err);
      assert.match(r.err, new RegExp(`quantized model, ${says} execution`));
      assert.equal(JSON.parse(fs.readFileSync(out, 'utf8')).generation.exec, exec);
    }
    const f = cli(['eval', '--ckpt', fp, ...common, '--out', path.join(tmp, 'fp.json')]);
    assert.equal(f.status, 0, f.err);
    assert.equal(JSON.parse(fs.readFileSync(path.join(tmp, 'fp.json'), 'utf8')).generation.exec, undefined);
    const bad = cli(['eval', '--ckpt', fp, '--exec', 'int', ...common]);
    assert.equal(bad.status, 1);
    assert.match(bad.err, /--exec int: .*fp\.safetensors is a full-precision checkpoint \(not quantized\); drop --exec/);
    const samples = cli(['eval', '--samples', tmp, '--exec', 'fake', '--metrics', 'is']);
    assert.equal(samples.status, 1);
    assert.match(samples.err, /--exec applies to --ckpt only/);
  });

  it('checkpointSource: exec as asked, images held rounded to 8 bits', async () => {
    const opts = { n: 3, steps: 2, seed: 1 };
    const i = await checkpointSource(q, opts), f = await checkpointSource(q, { ...opts, exec: 'fake' }), n = await checkpointSource(fp, opts);
    assert.deepEqual([i.exec, f.exec, n.exec], ['int', 'fake', null]);
    assert.equal(i.count, 3);
    const a = new Float32Array(3 * 32 * 32);
    i.read(0, 3, a);
    assert.ok(a.every((v) => Number.isInteger(Math.round((v + 1) * 127.5 * 1e4) / 1e4)));
    await assert.rejects(checkpointSource(fp, { ...opts, exec: 'int' }), /exec 'int': .* is a full-precision checkpoint/);
  });
});
