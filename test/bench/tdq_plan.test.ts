// Issue 13's plan of cells, its --dry-run estimates, the headline table (ours
// beside the paper, with the paired verdict) and the README section it writes
// (bench/tdq_plan.ts, bench/tdq_protocol.ts). Synthetic ledgers only: no model.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { ISSUE13, QAT_SECONDS_PER_IMAGE_FALLBACK, crossJobs, estimateRates, filterPlan, issue13Plan, listPlan } from '../../bench/tdq_plan';
import {
  type Cell, type Ledger, README_BEGIN, README_END, cellKey, dryRunText, fewStepMarkdown, headlineMarkdown, jobsOf, parseProtocolArgs, spliceReadme, tableMarkdown, verdict,
} from '../../bench/tdq_protocol';
import { meanCI } from '../../src/eval/protocol';

const setup: Ledger['setup'] = { ckpt: 'm.safetensors', sha256: 'ab'.repeat(32), calibSamples: 16, calibSteps: 50, calibSeed: 1000, heldOutSeed: 2000, batch: 250, reference: 'train' };

function ledgerOf(list: [string, string, number, number[]][], n = 2000): Ledger {
  const cells: Record<string, Cell> = {};
  for (const [method, bits, steps, fids] of list)
    fids.forEach((fid, seed) => {
      const c: Cell = { method, bits, steps, seed, n, fid, seconds: 100, exec: method === 'fp' ? 'fp32' : 'int', finished: '2026-12-03T00:00:00Z' };
      cells[cellKey(c)] = c;
    });
  return { setup, cells };
}

describe('bench/tdq_plan: the issue-13 plan', () => {
  const jobs = issue13Plan();
  const cells = jobs.flatMap((j) => j.steps.map((s) => `${j.method}|${j.bits}|${s}`));
  it('has every row and column of the issue, each cell once', () => {
    assert.equal(new Set(cells).size, cells.length, 'no cell twice');
    for (const bits of ['W8A8', 'W8A5', 'W8A4'])
      for (const m of ['ptq-tdq', 'ptq-minmax', 'ptq-percentile', 'ptq-mse', 'ptq-ptq4dm']) assert.ok(cells.includes(`${m}|${bits}|25`), `${m} ${bits}`);
    for (const bits of ['W8A8', 'W4A8', 'W8A4', 'W4A4', 'W3A3'])
      for (const m of ['qat-tdq', 'qat-lsq', 'qat-tdq-kd', 'qat-lsq-kd']) assert.ok(cells.includes(`${m}|${bits}|25`), `${m} ${bits}`);
    assert.deepEqual(cells.filter((c) => c.startsWith('qat-pact|')).sort(), ['qat-pact|W3A3|10', 'qat-pact|W3A3|100', 'qat-pact|W3A3|25', 'qat-pact|W4A4|10', 'qat-pact|W4A4|100', 'qat-pact|W4A4|25']);
    // 100 (the seed's default) and 10 steps: FP, W4A4 and W3A3 rows only
    const extra = cells.filter((c) => !c.endsWith('|25'));
    assert.ok(extra.every((c) => c.startsWith('fp|') || c.includes('|W4A4|') || c.includes('|W3A3|')), extra.join(' '));
    assert.ok(extra.includes('fp|FP|100') && extra.includes('fp|FP|10') && extra.includes('qat-tdq|W3A3|10') && extra.includes('qat-lsq-kd|W4A4|100'));
    assert.ok(!extra.some((c) => c.startsWith('ptq-')));
    // the 25-step table runs before the few-step experiment; PTQ (no training) first
    const firstExtra = jobs.findIndex((j) => j.steps[0] !== 25);
    assert.ok(jobs.slice(firstExtra).every((j) => !j.steps.includes(25)));
    assert.ok(jobs.findIndex((j) => j.method.startsWith('qat-')) > jobs.findIndex((j) => j.method.startsWith('ptq-')));
    assert.equal(cells.length, 1 + 18 + 24 + 13 * 2);
    assert.deepEqual(ISSUE13.extraSteps, [100, 10]);
  });
  it('filters: bits keep the FP row, step counts drop jobs left without one', () => {
    const f = filterPlan(jobs, { bits: ['W4A4'], steps: [100] });
    assert.ok(f.every((j) => j.steps.length === 1 && j.steps[0] === 100));
    assert.deepEqual([...new Set(f.map((j) => j.bits))].sort(), ['FP', 'W4A4']);
    assert.equal(f.length, 1 + 6);
    assert.deepEqual(filterPlan(jobs, { methods: ['ptq-tdq'] }).map((j) => j.bits), ['W8A8', 'W8A5', 'W8A4']);
    assert.deepEqual(crossJobs(['fp', 'ptq-tdq'], ['W8A4', 'W8A5'], [25]).map((j) => `${j.method} ${j.bits}`), ['fp FP', 'ptq-tdq W8A4', 'ptq-tdq W8A5']);
  });
  it('arguments: --plan with filters; a bad plan and --qat-file with a plan are errors', () => {
    const a = parseProtocolArgs(['--ledger', 'x.json', '--plan', 'issue13', '--bits', 'w3a3', '--eval-steps', '10']);
    assert.deepEqual(a.given, { bits: ['W3A3'], steps: [10] });
    assert.deepEqual(jobsOf(a).map((j) => `${j.method} ${j.bits} ${j.steps}`), ['fp FP 10', ...['qat-tdq', 'qat-lsq', 'qat-pact', 'qat-tdq-kd', 'qat-lsq-kd', 'qat-pact-kd'].map((m) => `${m} W3A3 10`)]);
    assert.equal(jobsOf(parseProtocolArgs(['--ledger', 'x.json'])).length, 1 + 3 * 5, 'no plan: the old default, fp and five PTQ methods at three settings');
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--plan', 'all']), /--plan: one of issue13, got 'all'/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--plan', 'issue13', '--qat-file', 'mine=f.safetensors']), /does not combine with --plan/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--plan', 'issue13', '--methods', 'qat-nope']), /unknown method 'qat-nope'/);
    assert.throws(() => parseProtocolArgs(['--ledger', 'x.json', '--eval-steps', '0']), /--eval-steps must be positive/);
  });
});

describe('bench/tdq_plan: estimates', () => {
  it('rates are seconds over work by execution, calibration the median by method, QAT per training image; cells done cost nothing', () => {
    const l = ledgerOf([['fp', 'FP', 25, [30, 31]], ['ptq-tdq', 'W8A5', 25, [40]], ['ptq-mse', 'W8A5', 25, [50]]], 1000);
    l.cells[cellKey({ method: 'fp', bits: 'FP', steps: 25, seed: 1, n: 1000 })].seconds = 300; // fp32: 100 and 300 -> median 200
    l.cells[cellKey({ method: 'ptq-tdq', bits: 'W8A5', steps: 25, seed: 0, n: 1000 })].calibSeconds = 120;
    l.cells[cellKey({ method: 'ptq-mse', bits: 'W8A5', steps: 25, seed: 0, n: 1000 })].calibSeconds = 60;
    const r = estimateRates([l]);
    assert.equal(r.perSampleStep.fp32, 200 / (1000 * 25));
    // a tiny cell (all overhead) weighs what its samples x steps are worth
    const tiny: Cell = { method: 'fp', bits: 'FP', steps: 2, seed: 9, n: 4, fid: 1, seconds: 50, exec: 'fp32', finished: 'x' };
    assert.equal(estimateRates([{ setup, cells: { ...l.cells, [cellKey(tiny)]: tiny } }]).perSampleStep.fp32, (400 + 50) / (2 * 1000 * 25 + 8));
    assert.equal(r.perSampleStep.int, 100 / (1000 * 25));
    assert.deepEqual(r.calib, { 'ptq-tdq': 120, 'ptq-mse': 60, '*': 90 });
    assert.equal(r.qatPerImage, QAT_SECONDS_PER_IMAGE_FALLBACK);
    assert.equal(r.qatMeasured, false);

    const jobs = [{ method: 'fp', bits: 'FP', steps: [25, 100] }, { method: 'ptq-tdq', bits: 'W8A5', steps: [25] }, { method: 'ptq-percentile', bits: 'W8A5', steps: [25] },
      { method: 'qat-tdq', bits: 'W4A4', steps: [25] }, { method: 'qat-tdq', bits: 'W4A4', steps: [100] }, { method: 'qat-lsq', bits: 'W4A4', steps: [25] }];
    const done = new Set([cellKey({ method: 'fp', bits: 'FP', steps: 25, seed: 0, n: 2000 }), cellKey({ method: 'ptq-tdq', bits: 'W8A5', steps: 25, seed: 0, n: 2000 }), cellKey({ method: 'ptq-tdq', bits: 'W8A5', steps: 25, seed: 1, n: 2000 })]);
    const p = listPlan(jobs, { seeds: [0, 1], n: 2000, exec: 'auto', qatSteps: 1000, qatBatch: 32, has: (k) => done.has(k), key: cellKey, trained: (m) => m === 'qat-lsq' }, r);
    assert.equal(p.rows.length, 2 * 2 + 2 + 2 + 2 + 2 + 2);
    assert.equal(p.doneCells, 3);
    const fp100 = p.rows.find((x) => x.method === 'fp' && x.steps === 100)!;
    assert.equal(fp100.seconds, r.perSampleStep.fp32 * 2000 * 100, 'linear in N x steps');
    // ptq-tdq W8A5 is done: no calibration; ptq-percentile has no own rate: the median of all; qat-tdq W4A4 trained once over its two jobs; qat-lsq already trained
    assert.deepEqual(p.setup.map((s) => `${s.method} ${s.what} ${s.seconds}`), ['ptq-percentile calibration 90', `qat-tdq QAT training (1000 steps of 32) ${QAT_SECONDS_PER_IMAGE_FALLBACK * 32 * 1000}`]);
    const cellSum = p.rows.filter((x) => !x.done).reduce((s, x) => s + x.seconds, 0);
    assert.equal(p.todoSeconds, cellSum + 90 + QAT_SECONDS_PER_IMAGE_FALLBACK * 32 * 1000);
    assert.match(p.text, /fp +FP +DDIM 25\/100 +1\/4 done; to do: s1@25 s0@100 s1@100/);
    assert.match(p.text, /ptq-tdq +W8A5 +DDIM 25 +2\/2 done\n/);
    assert.match(p.text, /14 cells \(N = 2000, seeds 0,1\): 3 done, 11 to do/);
    assert.match(p.text, /not measured on this model/);
  });
  it('a measured QAT run gives the training rate; the dry run reads the ledger and lists without a checkpoint', () => {
    const l = ledgerOf([['qat-tdq', 'W4A4', 25, [10]], ['fp', 'FP', 25, [5]], ['qat-lsq', 'W4A4', 25, [12]]]); // only the first cell of a QAT run carries its training seconds
    l.setup.qat = { steps: 1000, batch: 32, warmup: 50, lr: 2e-4, distillWeight: 1, calibMethod: 'stats', tdqInit: 'constant' };
    l.cells[cellKey({ method: 'qat-tdq', bits: 'W4A4', steps: 25, seed: 0, n: 2000 })].qat = { run: 'r', trainSeconds: 3200, lastLoss: 0.1, steps: 1000 };
    const r = estimateRates([l]);
    assert.equal(r.qatPerImage, 3200 / (32 * 1000));
    assert.ok(r.qatMeasured);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-plan-'));
    try {
      const a = parseProtocolArgs(['--ledger', path.join(dir, 'l.json'), '--ckpt', path.join(dir, 'absent.safetensors'), '--plan', 'issue13', '--bits', 'W4A4', '--methods', 'qat-tdq', '--estimate-from', path.join(dir, 'none.json')]);
      const text = dryRunText(a, l);
      assert.match(text, /^plan issue13: 2 jobs/);
      assert.match(text, /qat-tdq +W4A4 +DDIM 25 +1\/3 done; to do: s1@25 s2@25/);
      assert.match(text, /9 cells \(N = 2000, seeds 0,1,2\): 1 done, 8 to do/);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });
});

describe('bench/tdq_protocol: headline, few-step table, README section', () => {
  // seeds 0,1,2: TDQ better at W4A4 (diffs -3,-2,-4), worse at W8A8 (+2,+3,+2.5), unresolved at W4A8 (+1,-1,+0.5)
  const l = ledgerOf([
    ['fp', 'FP', 25, [20, 21, 22]],
    ['qat-tdq', 'W4A4', 25, [30, 31, 32]], ['qat-lsq', 'W4A4', 25, [33, 33, 36]],
    ['qat-tdq', 'W8A8', 25, [24, 26, 25.5]], ['qat-lsq', 'W8A8', 25, [22, 23, 23]],
    ['qat-tdq', 'W4A8', 25, [27, 26, 27.5]], ['qat-lsq', 'W4A8', 25, [26, 27, 27]],
    ['fp', 'FP', 100, [19, 20, 21]], ['qat-tdq', 'W4A4', 100, [29, 30, 31]], ['qat-lsq', 'W4A4', 100, [31, 31, 34]],
    ['fp', 'FP', 10, [40, 41, 42]], ['qat-tdq', 'W4A4', 10, [50, 51, 52]],
  ]);
  it('the table prints the TDQ smoothing choice with every candidate\'s held-out error', () => {
    const m = ledgerOf([['ptq-tdq', 'W8A5', 25, [40]]]);
    Object.values(m.cells)[0].smoothing = { h: 80, errors: [{ h: 0, error: 0.0342 }, { h: 80, error: 0.0246 }] };
    assert.match(tableMarkdown(m), /W8A5: 80 timesteps \(0: 3\.42e-2, 80: 2\.46e-2\)/);
  });
  it('verdicts from the paired interval', () => {
    assert.equal(verdict(meanCI([-3, -2, -4])), 'TDQ better');
    assert.equal(verdict(meanCI([2, 3, 2.5])), '**TDQ worse**');
    assert.equal(verdict(meanCI([1, -1, 0.5])), 'not resolved (interval spans 0)');
    assert.equal(verdict(meanCI([-3])), 'one seed: no verdict');
  });
  it('the headline puts the paper beside ours and says where TDQ does not win', () => {
    const md = headlineMarkdown(l);
    assert.match(md, /^Checkpoint m\.safetensors \(sha256 abababababab\)\. FID-FMNIST, DDIM 25 steps, N = 2000 per seed; FP 21\.00 ± 2\.48/);
    // diffs -3, -2, -4: mean -3, sd 1 -> half 2.48; relative to the baseline mean 34: -9%
    assert.match(md, /\| W4A4 \| qat-tdq vs qat-lsq \| 31\.00 ± 2\.48 \| 34\.00 ± 4\.30 \| -3\.00 ± 2\.48 \(-8\.8%\) \| TDQ better \| DDIM CIFAR-10: 4\.48 vs 7\.30 \(-39%\); LDM-8 churches: 4\.64 vs 5\.06 \(-8%\) \|/);
    assert.match(md, /\| W8A8 \| qat-tdq vs qat-lsq \|[^\n]*\| \*\*TDQ worse\*\* \| — \|/);
    assert.match(md, /\| W4A8 \| qat-tdq vs qat-lsq \|[^\n]*\| not resolved \(interval spans 0\) \| — \|/);
    assert.match(md, /Not measured yet \(the paper's comparisons\): W3A3 qat-tdq vs qat-lsq \(DDIM CIFAR-10: TDQ 6\.48, baseline not reported; LDM-8 churches: TDQ 6\.57, baseline not reported\); W8A5 ptq-tdq vs ptq-ptq4dm \(DDIM CIFAR-10: 5\.71 vs 22\.43 \(-75%\)/);
    assert.doesNotMatch(md, /\| 100 /, 'one step count only');
  });
  it('the few-step table: models at several step counts, one column each, paired differences per step count', () => {
    const md = fewStepMarkdown(l);
    assert.match(md, /\| model \| N \| DDIM 100 \| DDIM 25 \| DDIM 10 \|/);
    assert.match(md, /\| fp \| 2000 \| 20\.00 ± 2\.48 \(3 seeds\) \| 21\.00 ± 2\.48 \(3 seeds\) \| 41\.00 ± 2\.48 \(3 seeds\) \|/);
    assert.match(md, /\| qat-lsq W4A4 \| 2000 \| 32\.00 ± 4\.30 \(3 seeds\) \| 34\.00 ± 4\.30 \(3 seeds\) \| — \|/);
    assert.doesNotMatch(md, /W8A8/, 'models at one step count stay out');
    assert.match(md, /\| qat-tdq − qat-lsq W4A4 \| -2\.00 ± 2\.48 not resolved \(interval spans 0\) \| -3\.00 ± 2\.48 TDQ better \| — \|/);
    assert.equal(fewStepMarkdown(ledgerOf([['fp', 'FP', 25, [1, 2]]])), '');
    assert.match(tableMarkdown(l), /### DDIM 25 steps[^]*### DDIM 100 steps[^]*### DDIM 10 steps[^]*### Few-step experiment[^]*### Headline/);
  });
  it('the README section is replaced between its markers, and again on a rerun; no markers is an error', () => {
    const readme = `# x\n\nbefore\n${README_BEGIN}\nold text\n${README_END}\nafter\n`;
    const once = spliceReadme(readme, l, 'README.md', 'bench/results/tdq-table-protocol.md');
    assert.ok(once.startsWith('# x\n\nbefore\n') && once.endsWith(`${README_END}\nafter\n`));
    assert.doesNotMatch(once, /old text/);
    assert.match(once, /TDQ better/);
    assert.match(once, /Few-step experiment/);
    assert.match(once, /\[tdq-table-protocol\.md\]\(bench\/results\/tdq-table-protocol\.md\)/);
    assert.equal(spliceReadme(once, l, 'README.md', 'bench/results/tdq-table-protocol.md'), once, 'idempotent');
    assert.throws(() => spliceReadme('# no markers\n', l, 'R.md'), /--readme R\.md: no '<!-- tdq-protocol-table:begin -->'/);
  });
});

describe('bench/tdq_protocol: a filtered plan end to end (tiny model)', () => {
  // A stand-in for FID-FMNIST (the tiny model's 8x8 images do not fit the classifier): the mean pixel.
  const fakeFid = async (_name: string, x0: Float32Array) => x0.reduce((s, v) => s + v, 0) / x0.length;
  it('runs the plan\'s cells in order, writes the table and the README section, then has nothing left to do', async () => {
    const { qatConfig, writeFpCheckpoint } = await import('../quant/qat_helpers');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-plan-run-'));
    try {
      const fp = await writeFpCheckpoint(dir, qatConfig(4));
      const L = path.join(dir, 'ledger.json'), R = path.join(dir, 'README.md'), T = path.join(dir, 'table.md');
      fs.writeFileSync(R, `# r\n${README_BEGIN}\n${README_END}\n`);
      const argv = ['--ledger', L, '--ckpt', fp, '--plan', 'issue13', '--methods', 'fp,ptq-tdq,ptq-ptq4dm', '--bits', 'W8A5', '--eval-steps', '25,10',
        '--seeds', '0,1', '--n', '4', '--batch', '4', '--calib-samples', '2', '--calib-steps', '4', '--table', T, '--readme', R, '--estimate-from', L];
      const { protocolMain, readLedger } = await import('../../bench/tdq_protocol');
      const scored: string[] = [];
      await protocolMain(argv, { fid: async (name, x0) => (scored.push(name), fakeFid(name, x0)) });
      const l = readLedger(L)!;
      assert.deepEqual(Object.keys(l.cells), [
        'fp|FP|ddim25|seed0|n4', 'fp|FP|ddim25|seed1|n4', 'ptq-tdq|W8A5|ddim25|seed0|n4', 'ptq-tdq|W8A5|ddim25|seed1|n4',
        'ptq-ptq4dm|W8A5|ddim25|seed0|n4', 'ptq-ptq4dm|W8A5|ddim25|seed1|n4', 'fp|FP|ddim10|seed0|n4', 'fp|FP|ddim10|seed1|n4',
      ], 'the plan\'s order: the 25-step table, then the few-step cells');
      assert.equal(scored.length, 8);
      for (const c of Object.values(l.cells)) assert.equal(c.exec, c.method === 'fp' ? 'fp32' : 'int', `${c.method}: the integer path where it exists`);
      const readme = fs.readFileSync(R, 'utf8');
      assert.match(readme, /\| W8A5 \| ptq-tdq vs ptq-ptq4dm \| [^\n]* \| DDIM CIFAR-10: 5\.71 vs 22\.43/);
      assert.match(readme, /\| model \| N \| DDIM 25 \| DDIM 10 \|\n\|---\|---\|---\|---\|\n\| fp \| 4 \| [^|]+ \| [^|]+ \|/, 'few-step table: FP at 25 and 10 steps');
      assert.match(readme, /\[table\.md\]\(table\.md\)/, 'the link is relative to the README');
      assert.match(fs.readFileSync(T, 'utf8'), /### DDIM 10 steps, N = 4/);
      // a rerun scores nothing; the dry run lists every cell as done
      await protocolMain(argv, { fid: async () => { throw new Error('nothing should be scored'); } });
      const { dryRunText } = await import('../../bench/tdq_protocol');
      assert.match(dryRunText(parseProtocolArgs(argv), readLedger(L)), /8 cells \(N = 4, seeds 0,1\): 8 done, 0 to do/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bench/tdq_protocol: a QAT run reused by the few-step job (tiny model)', () => {
  it('trains once, and its training seconds are counted in one cell only', async () => {
    const { qatConfig, writeFpCheckpoint } = await import('../quant/qat_helpers');
    const { protocolMain, readLedger } = await import('../../bench/tdq_protocol');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-plan-qat-'));
    try {
      const fp = await writeFpCheckpoint(dir, qatConfig(4));
      const L = path.join(dir, 'ledger.json');
      await protocolMain(['--ledger', L, '--ckpt', fp, '--plan', 'issue13', '--methods', 'qat-lsq', '--bits', 'W3A3', '--eval-steps', '25,10', '--seeds', '0', '--n', '4', '--batch', '4',
        '--calib-samples', '2', '--calib-steps', '4', '--qat-steps', '2', '--qat-batch', '4', '--qat-warmup', '1'], { fid: async (_n, x0) => x0[0] });
      const cells = Object.values(readLedger(L)!.cells);
      assert.deepEqual(cells.map((c) => c.steps), [25, 10], 'the main table first, then the few-step job');
      assert.equal(new Set(cells.map((c) => c.qat?.run)).size, 1, 'one training run');
      assert.deepEqual(cells.map((c) => c.qat?.trainSeconds !== undefined), [true, false]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bench/tdq_protocol: joining workers\' ledgers', () => {
  it('--merge brings the QAT worker\'s cells and its QAT setup; a worker with another QAT setup is refused', async () => {
    const { protocolMain, readLedger, writeLedger } = await import('../../bench/tdq_protocol');
    const crypto = await import('node:crypto');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-merge-'));
    try {
      const ckpt = path.join(dir, 'm.safetensors');
      fs.writeFileSync(ckpt, 'not a model: only its bytes are hashed');
      const sha256 = crypto.createHash('sha256').update(fs.readFileSync(ckpt)).digest('hex');
      const qat = { steps: 1000, batch: 32, warmup: 50, lr: 2e-4, distillWeight: 1, calibMethod: 'stats' as const, tdqInit: 'constant' as const };
      const a = ledgerOf([['fp', 'FP', 25, [20, 21, 22]]]), b = ledgerOf([['qat-tdq', 'W4A4', 25, [30, 31, 32]], ['qat-lsq', 'W4A4', 25, [33, 33, 36]]]);
      a.setup = { ...setup, ckpt, sha256 };
      b.setup = { ...setup, ckpt, sha256, qat };
      for (const c of Object.values(b.cells)) c.qat = { run: 'r', lastLoss: 0.05, steps: 1000 };
      const A = path.join(dir, 'a.json'), B = path.join(dir, 'b.json'), C = path.join(dir, 'c.json'), T = path.join(dir, 't.md');
      writeLedger(A, a);
      writeLedger(B, b);
      writeLedger(C, { ...b, setup: { ...b.setup, qat: { ...qat, steps: 500 } } });
      await protocolMain(['--ledger', A, '--ckpt', ckpt, '--merge', B, '--table-only', '--table', T]);
      const l = readLedger(A)!;
      assert.equal(Object.keys(l.cells).length, 9);
      assert.deepEqual(l.setup.qat, qat);
      assert.match(fs.readFileSync(T, 'utf8'), /QAT cells: 1000 steps of batch 32/);
      await assert.rejects(protocolMain(['--ledger', A, '--ckpt', ckpt, '--merge', C, '--table-only']), /QAT cells were trained with steps = 500, this run has 1000|steps = 1000, this run has 500/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
