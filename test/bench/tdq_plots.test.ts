// bench/tdq_plots.ts: the FID-against-bits series from ledgers (panels by
// PTQ / QAT and weight bits, mean over seeds, FP flat) and its arguments.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { fidSeries, parsePlotArgs } from '../../bench/tdq_plots';
import { type Cell, type Ledger, cellKey } from '../../bench/tdq_protocol';

function ledger(rows: [string, string, number, number][]): Ledger {
  const cells: Record<string, Cell> = {};
  for (const [method, bits, seed, fid] of rows) {
    const c: Cell = { method, bits, steps: 25, seed, n: 100, fid, seconds: 1, exec: 'fake', finished: 'x' };
    cells[cellKey(c)] = c;
  }
  return { setup: { ckpt: 'm', sha256: 'a', calibSamples: 1, calibSteps: 1, calibSeed: 1000, heldOutSeed: 2000, batch: 1, reference: 'r' }, cells };
}

describe('bench/tdq_plots', () => {
  it('FID series: panels by kind and weight bits, seeds averaged, TDQ first, FP flat across the panel', () => {
    const g = fidSeries([
      ledger([['fp', 'FP', 0, 100], ['fp', 'FP', 1, 110], ['ptq-tdq', 'W8A5', 0, 150], ['ptq-tdq', 'W8A5', 1, 160], ['ptq-minmax', 'W8A5', 0, 480]]),
      ledger([['ptq-tdq', 'W8A4', 0, 230], ['ptq-minmax', 'W8A4', 0, 970], ['qat-tdq', 'W4A4', 0, 140], ['qat-lsq', 'W4A4', 0, 150], ['qat-tdq', 'W3A3', 0, 200]]),
    ]);
    assert.deepEqual(g.map((x) => x.panel), ['PTQ W8', 'QAT W3', 'QAT W4']);
    const ptq = g[0].series;
    assert.deepEqual(ptq.map((s) => s.name), ['ptq-tdq', 'ptq-minmax', 'FP']);
    assert.deepEqual(ptq[0].points, [{ x: 4, y: 230 }, { x: 5, y: 155 }]);
    assert.deepEqual(ptq[2].points, [{ x: 4, y: 105 }, { x: 5, y: 105 }]);
    assert.deepEqual(g[2].series.map((s) => s.name), ['qat-tdq', 'qat-lsq', 'FP']);
    // other step counts and sample counts stay out (FID moves with both): the DDIM 25 group at the largest N
    const extra = ledger([['ptq-tdq', 'W8A4', 0, 1]]);
    const c100 = { ...Object.values(extra.cells)[0], steps: 100 }, n50 = { ...Object.values(extra.cells)[0], n: 50 }, fp100 = { ...c100, method: 'fp', bits: 'FP', fid: 1 };
    extra.cells = { [cellKey(c100)]: c100, [cellKey(n50)]: n50, [cellKey(fp100)]: fp100 };
    const g2 = fidSeries([ledger([['fp', 'FP', 0, 100], ['fp', 'FP', 1, 110], ['ptq-tdq', 'W8A5', 0, 150], ['ptq-tdq', 'W8A4', 0, 230]]), extra]);
    assert.deepEqual(g2[0].series[0].points, [{ x: 4, y: 230 }, { x: 5, y: 150 }]);
    assert.deepEqual(g2[0].series[1].points, [{ x: 4, y: 105 }, { x: 5, y: 105 }]);
    assert.deepEqual(fidSeries([extra], { steps: 100, n: 100 })[0].series.map((s) => s.points), [[{ x: 4, y: 1 }], [{ x: 4, y: 1 }, { x: 4, y: 1 }]]);
  });
  it('arguments', () => {
    const a = parsePlotArgs(['--bits', 'w3a3', '--layers', 'a, b', '--ledgers', 'x.json']);
    assert.equal(a.bits, 'W3A3');
    assert.deepEqual(a.layers, ['a', 'b']);
    assert.deepEqual(a.ledgers, ['x.json']);
    assert.throws(() => parsePlotArgs(['--bits', 'W9']), /not of the form/);
    assert.throws(() => parsePlotArgs(['--nope']), /Unknown option/);
  });
});
