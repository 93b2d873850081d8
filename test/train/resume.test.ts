// A run stopped at a checkpoint and resumed must end bit-for-bit where an
// uninterrupted run ends: weights, EMA and losses. Dropout is on so that its
// generator's state is part of what must be restored.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { parseConfig } from '../../src/config';
import { train } from '../../src/train/trainer';
import { assertBitIdentical, losses, readTensors } from '../helpers/checkpoints';
import { tinyDdpmYaml } from '../helpers/configs';

const YAML = (maxSteps: number) => tinyDdpmYaml({ maxSteps, dropout: 0.2, checkpointEvery: 2, training: '  grad_clip: 0.5' });

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-resume-'));


describe('training resume', () => {
  it('stop at step 4 + resume to 6 == 6 steps uninterrupted (weights, EMA, optimizer, losses)', async () => {
    const { config } = parseConfig(YAML(6), 'test.yaml');
    const a = tmp(), b = tmp();
    const straight = await train({ config, outDir: a, print: null });
    assert.equal(straight.step, 6);
    const first = await train({ config, outDir: b, stopAtStep: 4, print: null });
    assert.equal(first.step, 4);
    assert.equal(first.exported, null);
    const resumed = await train({ config, outDir: b, resume: b, print: null });
    assert.equal(resumed.step, 6);
    assertBitIdentical(await readTensors(path.join(a, 'model.safetensors')), await readTensors(path.join(b, 'model.safetensors')), 'differs after resume');
    assertBitIdentical(await readTensors(straight.checkpoint), await readTensors(resumed.checkpoint), 'differs after resume');
    assert.deepEqual(losses(b), losses(a));
    // The loss must actually move: a run whose updates did nothing would also "resume" exactly.
    assert.notEqual(losses(a)[0], losses(a)[5]);
  });

  it('a process killed mid-run resumes from its last checkpoint and ends where an uninterrupted run ends', async () => {
    const dir = tmp();
    const cfgFile = path.join(dir, 'cfg.yaml');
    fs.writeFileSync(cfgFile, YAML(8));
    const bin = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
    const run = (args: string[], killAfterStep?: number) =>
      new Promise<number | null>((resolve, reject) => {
        const p = spawn(process.execPath, [bin, 'train', '--base', cfgFile, '--logdir', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (d) => {
          out += d;
          if (killAfterStep !== undefined && new RegExp(`step\\s+${killAfterStep}/`).test(out)) p.kill('SIGKILL');
        });
        p.stderr.on('data', (d) => (out += d));
        p.on('error', reject);
        p.on('exit', (code) => (code === 0 || killAfterStep !== undefined ? resolve(code) : reject(new Error(`train exited ${code}: ${out}`))));
      });
    await run(['--name', 'straight']);
    await run(['--name', 'killed'], 5);
    const ckpts = fs.readdirSync(path.join(dir, 'killed', 'checkpoints'));
    assert.ok(ckpts.every((f) => f.endsWith('.safetensors')), `no partial files may remain: ${ckpts}`);
    assert.ok(!fs.existsSync(path.join(dir, 'killed', 'model.safetensors')), 'the killed run must not have finished');
    await run(['--name', 'killed', '--resume', path.join(dir, 'killed')]);
    assertBitIdentical(await readTensors(path.join(dir, 'straight', 'model.safetensors')), await readTensors(path.join(dir, 'killed', 'model.safetensors')));
  });
});
