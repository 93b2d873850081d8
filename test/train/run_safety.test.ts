// Training runs are never lost or mixed: a fresh run refuses a folder that
// holds a run; temporaries of killed writes are removed on the next start;
// a bad data file and a non-finite loss stop with a checkpoint of the last
// good state (naming the file, or the step and layer) or are skipped.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { parseConfig } from '../../src/config';
import { SyntheticDataset, epochPermutation } from '../../src/data';
import { ImageFolderDataset } from '../../src/data/image_folder';
import { removeStaleTempFiles } from '../../src/io/atomic';
import { encodePng } from '../../src/io/png';
import type { Module } from '../../src/nn/module';
import { isGradEnabled } from '../../src/tensor/autograd';
import { scale } from '../../src/tensor/ops/elementwise';
import type { Tensor } from '../../src/tensor/tensor';
import { RunFolderBusyError, RunFolderExistsError } from '../../src/train/run_dir';
import { BadDataError, NonFiniteError, latestCheckpoint, train } from '../../src/train/trainer';
import { assertBitIdentical, readTensors } from '../helpers/checkpoints';
import { tinyDdpmYaml } from '../helpers/configs';
import type { TypedArray } from '../../src/tensor/native';

const YAML = (maxSteps: number) => tinyDdpmYaml({ maxSteps });
const config = (maxSteps: number) => parseConfig(YAML(maxSteps), 'test.yaml').config;

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-run-safety-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const tmp = () => path.join(root, `run-${++n}`);


function allFinite(w: Map<string, TypedArray>): boolean {
  for (const a of w.values()) for (const v of a) if (!Number.isFinite(v)) return false;
  return true;
}

const logSteps = (dir: string) => fs.readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number; images_per_s: number; elapsed_s: number });
const skippedLines = (dir: string) => fs.readFileSync(path.join(dir, 'skipped.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

/** A pid that ran and has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  return r.pid!;
}

describe('run folders', () => {
  it('a fresh run refuses a folder holding a run, and leaves that run untouched', async () => {
    const dir = tmp();
    await train({ config: config(3), outDir: dir, stopAtStep: 2, print: null });
    const log = fs.readFileSync(path.join(dir, 'log.jsonl'));
    const ckpts = fs.readdirSync(path.join(dir, 'checkpoints'));
    await assert.rejects(train({ config: config(3), outDir: dir, print: null }), (e: Error) => {
      assert.ok(e instanceof RunFolderExistsError, String(e));
      assert.match(e.message, new RegExp(`--resume ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      return true;
    });
    assert.ok(fs.readFileSync(path.join(dir, 'log.jsonl')).equals(log), 'the first run’s log is unchanged');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'checkpoints')), ckpts);
    // --resume continues it.
    const r = await train({ config: config(3), outDir: dir, resume: dir, print: null });
    assert.equal(r.step, 3);
    assert.deepEqual(logSteps(dir).map((x) => x.step), [1, 2, 3]);
    assert.equal(fs.existsSync(path.join(dir, '.lock')), false, 'the lock is released');
  });

  it('two processes never train one folder: a live holder of .lock refuses the resume; a dead one’s lock is taken over', async () => {
    const dir = tmp();
    await train({ config: config(3), outDir: dir, stopAtStep: 1, print: null });
    const lock = path.join(dir, '.lock');
    fs.writeFileSync(lock, `${process.ppid}\n`);
    await assert.rejects(train({ config: config(3), outDir: dir, resume: dir, print: null }), (e: Error) => {
      assert.ok(e instanceof RunFolderBusyError, String(e));
      assert.match(e.message, new RegExp(`in use by process ${process.ppid}`));
      return true;
    });
    assert.deepEqual(logSteps(dir).map((x) => x.step), [1], 'the refused resume wrote nothing');
    fs.writeFileSync(lock, `${deadPid()}\n`);
    const r = await train({ config: config(3), outDir: dir, resume: dir, print: null });
    assert.equal(r.step, 3);
    assert.equal(fs.existsSync(lock), false);
  });
});

describe('temporaries of interrupted writes', () => {
  it('removeStaleTempFiles removes only our pattern, of a gone writer or old', () => {
    const dir = tmp();
    fs.mkdirSync(dir);
    const dead = deadPid();
    const alive = process.ppid;
    const names = {
      dead: `.step-00000002.safetensors.${dead}.0123abcd.tmp`,
      aliveFresh: `.log.jsonl.${alive}.0123abce.tmp`,
      aliveOld: `.model.safetensors.${alive}.0123abcf.tmp`,
      own: `.x.safetensors.${process.pid}.01234567.tmp`,
      notOurs: 'notes.tmp',
      badHex: `.x.safetensors.${dead}.zzzzzzzz.tmp`,
      real: 'step-00000002.safetensors',
    };
    for (const f of Object.values(names)) fs.writeFileSync(path.join(dir, f), 'x');
    const old = new Date(Date.now() - 3 * 24 * 3600 * 1000);
    fs.utimesSync(path.join(dir, names.aliveOld), old, old);
    const removed = removeStaleTempFiles(dir).map((f) => path.basename(f)).sort();
    assert.deepEqual(removed, [names.dead, names.aliveOld].sort());
    assert.deepEqual(fs.readdirSync(dir).sort(), [names.aliveFresh, names.own, names.notOurs, names.badHex, names.real].sort());
  });

  it('a resume (and latestCheckpoint) removes a killed writer’s partial checkpoint', async () => {
    const dir = tmp();
    await train({ config: config(3), outDir: dir, stopAtStep: 2, print: null });
    const partial = path.join(dir, 'checkpoints', `.step-00000003.safetensors.${deadPid()}.deadbeef.tmp`);
    fs.writeFileSync(partial, Buffer.alloc(1000, 7));
    const lines: string[] = [];
    const r = await train({ config: config(3), outDir: dir, resume: dir, print: (l) => lines.push(l) });
    assert.equal(r.step, 3);
    assert.equal(fs.existsSync(partial), false, 'the partial temporary is removed');
    assert.ok(lines.some((l) => l.includes(path.basename(partial))), 'its removal is reported');
    const again = path.join(dir, `.model.safetensors.${deadPid()}.0badcafe.tmp`);
    fs.writeFileSync(again, 'x');
    assert.ok(latestCheckpoint(dir));
    assert.equal(fs.existsSync(again), false);
  });
});

describe('data notes', () => {
  it('what the folder walk left out (a dangling link) is printed at the start of the run', async () => {
    const data = tmp();
    fs.mkdirSync(data, { recursive: true });
    for (let i = 0; i < 8; ++i) fs.writeFileSync(path.join(data, `${i}.png`), encodePng(new Float32Array(64).fill(i / 8), [1, 8, 8]));
    fs.symlinkSync(path.join(data, 'nowhere'), path.join(data, 'gone'));
    const lines: string[] = [];
    await train({ config: config(1), outDir: tmp(), dataset: new ImageFolderDataset({ root: data, channels: 1, size: 8 }), print: (l) => lines.push(l) });
    assert.ok(lines.some((l) => /^tdq-native: data: skipped .*gone: dangling symbolic link/.test(l)), lines.join('\n'));
  });
});

/** Synthetic data whose sample `bad` fails as a corrupt file does. */
class BadFileDataset extends SyntheticDataset {
  constructor(readonly bad: number, readonly file: string) {
    super({ count: 40, kind: 'blobs', seed: 3, channels: 1, size: 8 });
  }
  override get(index: number, out?: Float32Array, offset?: number): Float32Array {
    if (index === this.bad) throw Object.assign(new Error(`${this.file}: not a PNG file (bad signature)`), { file: this.file });
    return super.get(index, out, offset);
  }
}

describe('bad data files', () => {
  // The 10th sample of epoch 0 is in the batch of step 3 (batch size 4).
  const badIndex = epochPermutation(40, 11, 0)[9];
  const file = '/data/train/img-0042.png';

  it('stop: checkpoint of step 2, an error naming the file; resuming with skip trains on without it', async () => {
    const clean = tmp(), dir = tmp();
    const c = await train({ config: config(5), outDir: clean, print: null });
    await assert.rejects(train({ config: config(5), outDir: dir, dataset: new BadFileDataset(badIndex, file), print: null }), (e: Error) => {
      assert.ok(e instanceof BadDataError, String(e));
      assert.equal(e.file, file);
      assert.equal(e.step, 3);
      assert.match(e.message, /img-0042\.png/);
      return true;
    });
    const ck = latestCheckpoint(dir)!;
    assert.equal(path.basename(ck), 'step-00000002.safetensors', 'the last good state is checkpointed');
    // Resuming with the default policy stops at the same file again, without losing anything.
    await assert.rejects(train({ config: config(5), outDir: dir, resume: dir, dataset: new BadFileDataset(badIndex, file), print: null }), BadDataError);
    const lines: string[] = [];
    const r = await train({ config: config(5), outDir: dir, resume: dir, dataset: new BadFileDataset(badIndex, file), onBadData: 'skip', print: (l) => lines.push(l) });
    assert.equal(r.step, 5);
    assert.equal(r.skippedSamples, 1);
    assert.ok(lines.some((l) => l.includes(file) && l.includes('skipped')), 'the skipped file is logged');
    const sk = skippedLines(dir);
    assert.equal(sk.length, 1);
    assert.equal(sk[0].file, file);
    assert.equal(sk[0].step, 3);
    // Steps 1-2 are those of the clean run; step 3 trained on the 3 good samples of its batch.
    const a = logSteps(clean), b = logSteps(dir);
    assert.deepEqual(b.map((x) => x.step), [1, 2, 3, 4, 5]);
    assert.deepEqual(b.slice(0, 2), a.slice(0, 2).map((x, i) => ({ ...x, images_per_s: b[i].images_per_s, elapsed_s: b[i].elapsed_s })));
    assert.notEqual(b[2].loss, a[2].loss);
    assert.ok(allFinite(await readTensors(r.exported!)));
    assert.equal(c.skippedSamples, 0);
  });
});

/**
 * Makes `name`'s output NaN in the forward of training step `atStep` (and in
 * its diagnostic rerun, which runs without the graph), as an overflowing layer does.
 */
function poison(name: string, atStep: number) {
  return async (unet: Module) => {
    const m = unet.namedModules().find(([n]) => n === name)?.[1];
    assert.ok(m, `the model has a module ${name}`);
    const orig = (m as unknown as { forward: (...a: unknown[]) => Tensor }).forward.bind(m);
    let calls = 0;
    (m as unknown as { forward: (...a: unknown[]) => Tensor }).forward = (...args: unknown[]) => {
      if (isGradEnabled()) calls += 1;
      const out = orig(...args);
      return calls === atStep ? scale(out, NaN) : out;
    };
    return { model: unet as never };
  };
}

describe('non-finite loss', () => {
  const layer = 'middle_block.1';

  it('stop: names step and layer, checkpoints the last good state (not the NaN weights); --resume ends where a clean run ends', async () => {
    const clean = tmp(), dir = tmp();
    await train({ config: config(5), outDir: clean, print: null });
    await assert.rejects(train({ config: config(5), outDir: dir, prepare: poison(layer, 3), print: null }), (e: Error) => {
      assert.ok(e instanceof NonFiniteError, String(e));
      assert.equal(e.step, 3);
      assert.match(e.message, /step 3/);
      assert.match(e.message, new RegExp(`'${layer.replace('.', '\\.')}'`));
      return true;
    });
    const ck = latestCheckpoint(dir)!;
    assert.equal(path.basename(ck), 'step-00000002.safetensors');
    const w = await readTensors(ck);
    assert.ok(allFinite(w), 'the checkpoint holds finite weights');
    const r = await train({ config: config(5), outDir: dir, resume: dir, print: null });
    assert.equal(r.step, 5);
    assertBitIdentical(await readTensors(path.join(clean, 'model.safetensors')), await readTensors(r.exported!));
  });

  it('skip: the batch is left out (no optimizer step), counted and logged with its layer; training goes on', async () => {
    const dir = tmp();
    const lines: string[] = [];
    const r = await train({ config: config(5), outDir: dir, prepare: poison(layer, 3), onNan: 'skip', print: (l) => lines.push(l) });
    assert.equal(r.step, 5);
    assert.equal(r.skippedSteps, 1);
    assert.ok(lines.some((l) => l.includes('step 3') && l.includes(layer)), lines.join('\n'));
    const sk = skippedLines(dir);
    assert.equal(sk.length, 1);
    assert.equal(sk[0].step, 3);
    assert.match(String(sk[0].where), new RegExp(layer.replace('.', '\\.')));
    assert.deepEqual(logSteps(dir).map((x) => x.step), [1, 2, 4, 5]);
    assert.ok(logSteps(dir).every((x) => Number.isFinite(x.loss)));
    assert.ok(allFinite(await readTensors(r.exported!)), 'no NaN reached the weights');
  });

  it('skip has a limit: more than --max-nan-skips non-finite steps in a row stop the run', async () => {
    const dir = tmp();
    const every = async (unet: Module) => {
      const m = unet.namedModules().find(([n]) => n === layer)![1] as unknown as { forward: (...a: unknown[]) => Tensor };
      const orig = m.forward.bind(m);
      let calls = 0;
      m.forward = (...args: unknown[]) => {
        if (isGradEnabled()) calls += 1;
        const out = orig(...args);
        return calls >= 2 ? scale(out, NaN) : out;
      };
      return { model: unet as never };
    };
    await assert.rejects(train({ config: config(8), outDir: dir, prepare: every, onNan: 'skip', maxNanSkips: 2, print: null }), (e: Error) => {
      assert.ok(e instanceof NonFiniteError, String(e));
      assert.equal(e.step, 4);
      assert.match(e.message, /3 steps in a row were non-finite, more than --max-nan-skips 2/);
      return true;
    });
    assert.equal(skippedLines(dir).length, 2);
  });
});
