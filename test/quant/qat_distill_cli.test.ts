// `train --distill` through the CLI: the teacher is the --ckpt weights, copied
// into the run folder so that --resume needs nothing else; the run's weight
// is in its checkpoints, a resume keeps it and refuses another; --distill
// without QAT is a clear error.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { inspectSafetensors } from '../../src/io/safetensors';
import { qatConfig, qatYaml, writeFpCheckpoint } from './qat_helpers';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });

describe('train --distill', () => {
  it('distils from --ckpt, resumes from the run folder alone, refuses a changed weight', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-distill-cli-'));
    const cfg = path.join(dir, 'tiny.yaml');
    fs.writeFileSync(cfg, qatYaml(4));
    const fp = await writeFpCheckpoint(dir, qatConfig(4));
    const ckpt = path.join(dir, 'teacher-src.safetensors');
    fs.renameSync(fp, ckpt);
    const q = ['--n-bit-w', '4', '--n-bit-a', '4', '--use-dynamic', '--calib-samples', '2', '--calib-steps', '4'];
    const first = run(['train', '--base', cfg, '--logdir', dir, '--name', 'd', '--ckpt', ckpt, ...q, '--distill', '--distill-weight', '0.5', '--max-steps', '2']);
    assert.equal(first.status, 0, first.stderr);
    assert.match(first.stdout, /distillation: loss = 0\.5 x MSE\(eps, teacher eps\) \+ 0\.5 x diffusion loss/);
    const copy = path.join(dir, 'd', 'teacher.safetensors');
    assert.deepEqual(fs.readFileSync(copy), fs.readFileSync(ckpt));
    const meta = (await inspectSafetensors(path.join(dir, 'd', 'checkpoints', 'step-00000002.safetensors'))).metadata ?? {};
    assert.equal(meta.distill_weight, '0.5');
    // The original file may go: the run folder has its teacher.
    fs.renameSync(ckpt, `${ckpt}.moved`);
    const bad = run(['train', '--base', cfg, '--logdir', dir, '--resume', path.join(dir, 'd'), '--distill', '--distill-weight', '0.3']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /distills with weight 0\.5; a resumed run keeps its loss/);
    const resumed = run(['train', '--base', cfg, '--logdir', dir, '--resume', path.join(dir, 'd'), '--max-steps', '4']);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stdout, /distillation teacher: .*d\/teacher\.safetensors/);
    assert.match(resumed.stdout, /finished at step 4/);
    const noQat = run(['train', '--base', cfg, '--logdir', dir, '--name', 'x', '--distill']);
    assert.equal(noQat.status, 1);
    assert.match(noQat.stderr, /--distill applies to QAT/);
    const range = run(['train', '--base', cfg, '--logdir', dir, '--name', 'y', '--ckpt', `${ckpt}.moved`, ...q, '--distill', '--distill-weight', '2']);
    assert.equal(range.status, 1);
    assert.match(range.stderr, /--distill-weight: distill weight must be a number in \[0, 1\], got 2/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
