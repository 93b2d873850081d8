// `tdq-native train` through the CLI: a fresh run gets its own
// <timestamp>_<config> folder and refuses one that holds a run; SIGTERM and
// SIGINT stop at a step boundary with a checkpoint and exit 143 / 130, and
// --resume from that checkpoint ends bit-for-bit where an uninterrupted run ends.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { runFolder } from '../../src/cli/commands/train';
import { assertBitIdentical, readTensors } from '../helpers/checkpoints';
import { tinyDdpmYaml } from '../helpers/configs';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');

const YAML = tinyDdpmYaml({ maxSteps: 30 });

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-cli-runs-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const cfg = path.join(dir, 'tiny.yaml');
fs.writeFileSync(cfg, YAML);

function cli(args: string[]) {
  return spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--logdir', dir, ...args], { encoding: 'utf8' });
}

async function assertSameModel(a: string, b: string): Promise<void> {
  assertBitIdentical(await readTensors(a), await readTensors(b));
}

/** Runs train; sends `signals` once the log shows step 3; resolves to the exit code and output. */
function runUntilSignal(args: string[], signals: NodeJS.Signals[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, 'train', '--base', cfg, '--logdir', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let sent = false;
    p.stdout.on('data', (d) => {
      out += d;
      if (!sent && /step\s+3\//.test(out)) {
        sent = true;
        for (const s of signals) p.kill(s);
      }
    });
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

describe('train run folders (CLI)', () => {
  it('without --name: <logdir>/<%Y-%m-%dT%H-%M-%S>_<config name>', () => {
    assert.equal(runFolder({ base: 'configs/fmnist-small.yaml', logdir: 'logs' }, undefined, new Date(2026, 0, 31, 9, 5, 7)), path.join('logs', '2026-01-31T09-05-07_fmnist-small'));
    const r = cli(['--max-steps', '1']);
    assert.equal(r.status, 0, r.stderr);
    const made = fs.readdirSync(dir).filter((f) => f.endsWith('_tiny'));
    assert.equal(made.length, 1, `${fs.readdirSync(dir)}`);
    assert.match(made[0], /^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d_tiny$/);
    assert.ok(fs.existsSync(path.join(dir, made[0], 'model.safetensors')));
  });

  it('the same --name twice: the second run is refused, says how to continue, and changes nothing', () => {
    const first = cli(['--name', 'same', '--max-steps', '2']);
    assert.equal(first.status, 0, first.stderr);
    const run = path.join(dir, 'same');
    const before = ['log.jsonl', 'model.safetensors'].map((f) => fs.readFileSync(path.join(run, f)));
    const ckpts = fs.readdirSync(path.join(run, 'checkpoints'));
    const second = cli(['--name', 'same', '--max-steps', '2']);
    assert.equal(second.status, 1);
    assert.match(second.stderr, /already holds a run/);
    assert.ok(second.stderr.includes(`--resume ${run}`), second.stderr);
    assert.deepEqual(['log.jsonl', 'model.safetensors'].map((f) => fs.readFileSync(path.join(run, f))), before);
    assert.deepEqual(fs.readdirSync(path.join(run, 'checkpoints')), ckpts);
    // --resume with a --name of another folder is refused too.
    const mixed = cli(['--name', 'other', '--resume', run]);
    assert.equal(mixed.status, 1);
    assert.match(mixed.stderr, /leave --name out/);
  });
});

describe('train --resume keeps the run settings (CLI)', () => {
  it("the run's --set / --max-steps values win over the YAML; this command line's win over both", () => {
    const first = cli(['--name', 'keep', '--max-steps', '4', '--set', 'training.checkpoint_every=2', '--set', 'training.keep_checkpoints=10']);
    assert.equal(first.status, 0, first.stderr);
    const run = path.join(dir, 'keep');
    // Without flags: the run had max_steps 4 and is done at step 4, whatever the YAML (30) says.
    const same = spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--resume', run], { encoding: 'utf8' });
    assert.equal(same.status, 0, same.stderr);
    assert.match(same.stdout, /training\.max_steps = 4 \(the config now says 30\)/);
    assert.match(same.stdout, /training\.checkpoint_every = 2 \(the config now says 100\)/);
    assert.match(same.stdout, /finished at step 4\b/);
    // --max-steps on this command line extends it; the run's checkpoint interval (2, not the YAML's 100) stays.
    const more = spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--resume', run, '--max-steps', '8'], { encoding: 'utf8' });
    assert.equal(more.status, 0, more.stderr);
    assert.doesNotMatch(more.stdout, /training\.max_steps =/);
    assert.match(more.stdout, /finished at step 8\b/);
    const ckpts = fs.readdirSync(path.join(run, 'checkpoints'));
    assert.ok(ckpts.some((f) => /step-0*6\.safetensors$/.test(f)), `${ckpts}`);
  });
});

describe('train stopped by a signal (CLI)', () => {
  let straight = '';
  it('an uninterrupted reference run', () => {
    const r = cli(['--name', 'straight']);
    assert.equal(r.status, 0, r.stderr);
    straight = path.join(dir, 'straight', 'model.safetensors');
  });

  for (const [sig, code, signals] of [
    ['SIGTERM', 143, ['SIGTERM']],
    ['SIGINT', 130, ['SIGINT', 'SIGINT']], // a second signal while stopping does not cut the checkpoint short
  ] as const) {
    it(`${signals.join(' + ')}: checkpoint at the step boundary, exit ${code}; --resume ends where the uninterrupted run ends`, async () => {
      const name = sig.toLowerCase();
      const run = path.join(dir, name);
      const r = await runUntilSignal(['--name', name], [...signals]);
      assert.equal(r.signal, null, r.out);
      assert.equal(r.code, code, r.out);
      const ckpts = fs.readdirSync(path.join(run, 'checkpoints'));
      assert.equal(ckpts.length, 1, `${ckpts}`);
      const step = Number(/^step-(\d+)\.safetensors$/.exec(ckpts[0])![1]);
      assert.ok(step >= 3 && step < 30, `stopped at step ${step}`);
      assert.ok(!fs.existsSync(path.join(run, 'model.safetensors')));
      const resumed = spawnSync(process.execPath, [BIN, 'train', '--base', cfg, '--resume', run], { encoding: 'utf8' });
      assert.equal(resumed.status, 0, resumed.stderr);
      assert.match(resumed.stdout, new RegExp(`resumed from .*step-0*${step}\\.safetensors at step ${step}`));
      await assertSameModel(straight, path.join(run, 'model.safetensors'));
    });
  }
});
