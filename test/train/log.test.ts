import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { logTicks, niceTicks, plotLines, smooth } from '../../src/io/plot';
import { TrainLogger, readCsvLog, readJsonlLog } from '../../src/train/log';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-log-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('TrainLogger', () => {
  it('emits one record per N steps with the window mean loss, lr and images/s', () => {
    const lines: string[] = [];
    const dir = path.join(tmp, 'run1');
    const log = new TrainLogger({ batchSize: 8, every: 5, dir, print: (l) => lines.push(l), maxSteps: 12 });
    const recs = [];
    for (let s = 1; s <= 12; ++s) {
      const r = log.step(s, { loss: s, lr: s * 1e-4, grad_norm: 2 * s });
      if (r) recs.push(r);
    }
    // Windows end at steps 5, 10 and the last step 12.
    assert.deepEqual(recs.map((r) => r.step), [5, 10, 12]);
    assert.deepEqual(recs.map((r) => r.loss), [3, 8, 11.5]);
    assert.deepEqual(recs.map((r) => r.grad_norm), [6, 16, 23]);
    assert.ok(Math.abs(recs[0].lr - 5e-4) < 1e-12, 'the lr of the last step of the window');
    for (const r of recs) assert.ok(r.images_per_s > 0 && r.elapsed_s >= 0);
    assert.equal(lines.length, 3);
    assert.match(lines[0], /^step {1,2}5\/12 {2}loss 3 {2}lr 5\.00e-4 {2}[\d.]+ img\/s {2}grad_norm 6 {2}eta /);

    const jsonl = readJsonlLog(path.join(dir, 'log.jsonl'));
    assert.deepEqual(jsonl.map((r) => r.loss), [3, 8, 11.5]);
    const csv = fs.readFileSync(path.join(dir, 'log.csv'), 'utf8').trim().split('\n');
    assert.equal(csv[0], 'step,loss,lr,images_per_s,elapsed_s,grad_norm');
    assert.equal(csv.length, 4);
    assert.deepEqual(csv[2].split(',').slice(0, 2), ['10', '8']);
  });

  it('writes non-finite losses as null / nan and keeps going', () => {
    const dir = path.join(tmp, 'nan');
    const log = new TrainLogger({ batchSize: 1, every: 1, dir, print: null });
    log.step(1, { loss: NaN, lr: 1 });
    log.step(2, { loss: 0.5, lr: 1 });
    const text = fs.readFileSync(path.join(dir, 'log.jsonl'), 'utf8');
    assert.match(text.split('\n')[0], /"loss":null/);
    assert.ok(Number.isNaN(readJsonlLog(path.join(dir, 'log.jsonl'))[0].loss));
    assert.match(fs.readFileSync(path.join(dir, 'log.csv'), 'utf8'), /\n1,nan,/);
  });

  it('on resume keeps the records up to the checkpoint and drops later ones', () => {
    const dir = path.join(tmp, 'resume');
    const a = new TrainLogger({ batchSize: 1, every: 10, dir, print: null });
    for (let s = 1; s <= 50; ++s) a.step(s, { loss: 1 / s, lr: 1 });
    // The checkpoint was at step 30; steps 31..50 are redone.
    const b = new TrainLogger({ batchSize: 1, every: 10, dir, print: null, resumeStep: 30 });
    assert.deepEqual(b.records().map((r) => r.step), [10, 20, 30]);
    for (let s = 31; s <= 40; ++s) b.step(s, { loss: 7, lr: 1 });
    assert.deepEqual(readJsonlLog(path.join(dir, 'log.jsonl')).map((r) => [r.step, r.loss]).slice(2), [[30, a.records()[2].loss], [40, 7]]);
    const csv = fs.readFileSync(path.join(dir, 'log.csv'), 'utf8').trim().split('\n');
    assert.deepEqual(csv.slice(1).map((l) => Number(l.split(',')[0])), [10, 20, 30, 40]);
    // A torn last line (a killed writer) is skipped when reading.
    fs.appendFileSync(path.join(dir, 'log.jsonl'), '{"step":50,"lo');
    assert.equal(readJsonlLog(path.join(dir, 'log.jsonl')).length, 4);
  });

  it('resumes a CSV-only log from the CSV', () => {
    const dir = path.join(tmp, 'resume-csv');
    const a = new TrainLogger({ batchSize: 1, every: 5, dir, print: null, formats: ['csv'] });
    for (let s = 1; s <= 20; ++s) a.step(s, { loss: s, lr: 0.5 });
    assert.equal(fs.existsSync(path.join(dir, 'log.jsonl')), false);
    const b = new TrainLogger({ batchSize: 1, every: 5, dir, print: null, formats: ['csv'], resumeStep: 10 });
    assert.deepEqual(b.records().map((r) => [r.step, r.loss, r.lr]), [[5, 3, 0.5], [10, 8, 0.5]]);
    assert.deepEqual(readCsvLog(path.join(dir, 'log.csv')).map((r) => r.step), [5, 10]);
  });

  it('draws the loss curve PNG at close', () => {
    const dir = path.join(tmp, 'plot');
    const log = new TrainLogger({ batchSize: 4, every: 2, dir, print: null });
    for (let s = 1; s <= 100; ++s) log.step(s, { loss: 0.05 + Math.exp(-s / 20), lr: 1e-3 });
    const file = log.close({ step: 100 });
    assert.equal(file, path.join(dir, 'loss.png'));
    const png = PNG.sync.read(fs.readFileSync(file as string));
    assert.deepEqual([png.width, png.height], [800, 500]);
    // Both series colors appear (blue loss, orange smoothed).
    let blue = 0, orange = 0;
    for (let i = 0; i < png.data.length; i += 4) {
      const [r, g, b] = [png.data[i], png.data[i + 1], png.data[i + 2]];
      if (r === 31 && g === 119 && b === 180) blue += 1;
      if (r === 255 && g === 127 && b === 14) orange += 1;
    }
    assert.ok(blue > 200 && orange > 200, `blue ${blue}, orange ${orange}`);
    assert.throws(() => log.step(101, { loss: 1, lr: 1 }), /after close/);
  });
});

describe('plot helpers', () => {
  it('chooses 1-2-5 ticks and decade ticks', () => {
    assert.deepEqual(niceTicks(0, 10), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(niceTicks(0.013, 0.061, 5), [0.02, 0.03, 0.04, 0.05, 0.06]);
    assert.deepEqual(niceTicks(0, 20000, 6), [0, 5000, 10000, 15000, 20000]);
    assert.deepEqual(logTicks(0.003, 0.9), [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]);
    assert.deepEqual(logTicks(1e-4, 10), [1e-4, 1e-3, 0.01, 0.1, 1, 10]);
  });

  it('smooths with a centered window without lag', () => {
    const pts = [1, 2, 3, 4, 5].map((y, x) => ({ x, y }));
    assert.deepEqual(smooth(pts, 3).map((p) => p.y), [1.5, 2, 3, 4, 4.5]);
    const gap = smooth([{ x: 0, y: 1 }, { x: 1, y: NaN }, { x: 2, y: 3 }], 3);
    assert.deepEqual(gap.map((p) => p.y), [1, 2, 3]);
  });

  it('draws points on a linear axis where they belong', () => {
    const buf = plotLines([{ name: 'a', points: [{ x: 0, y: 0 }, { x: 10, y: 10 }] }], { width: 300, height: 200 });
    const png = PNG.sync.read(buf);
    // The diagonal goes from bottom left to top right: blue ink in the lower-left and upper-right quarters only.
    const blueAt = (x0: number, x1: number, y0: number, y1: number) => {
      let n = 0;
      for (let y = y0; y < y1; ++y) for (let x = x0; x < x1; ++x) {
        const i = (y * 300 + x) * 4;
        if (png.data[i] === 31 && png.data[i + 1] === 119 && png.data[i + 2] === 180) n += 1;
      }
      return n;
    };
    assert.ok(blueAt(0, 150, 100, 200) > 0 && blueAt(150, 300, 0, 100) > 0);
    assert.equal(blueAt(0, 150, 0, 90), 0);
    assert.equal(blueAt(160, 300, 110, 200), 0);
  });
});
