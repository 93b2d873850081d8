import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { formatMeanCI, incompleteBeta, meanCI, pairedDifferences, spreadAt, spreadScaling, studentTCdf, studentTQuantile } from '../../src/eval/protocol';

const close = (a: number, b: number, tol: number, what = '') => assert.ok(Math.abs(a - b) <= tol, `${what} ${a} vs ${b} (tol ${tol})`);

describe('eval/protocol: Student t', () => {
  it('incomplete beta matches closed forms', () => {
    // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b
    close(incompleteBeta(0.3, 1, 1), 0.3, 1e-12);
    close(incompleteBeta(0.6, 3, 1), 0.216, 1e-12);
    close(incompleteBeta(0.2, 1, 4), 1 - 0.8 ** 4, 1e-12);
    close(incompleteBeta(0.5, 2.5, 2.5), 0.5, 1e-12);
  });
  it('t CDF: dof 1 is Cauchy, symmetric', () => {
    for (const t of [-3, -0.5, 0, 0.7, 4]) close(studentTCdf(t, 1), 0.5 + Math.atan(t) / Math.PI, 1e-10, `t=${t}`);
    close(studentTCdf(1.3, 5) + studentTCdf(-1.3, 5), 1, 1e-12);
  });
  it('0.975 quantiles match the published table', () => {
    // Student t table, two-sided 95%
    const table: [number, number][] = [[1, 12.7062], [2, 4.3027], [3, 3.1824], [4, 2.7764], [9, 2.2622], [29, 2.0452], [1000, 1.9623]];
    for (const [dof, q] of table) close(studentTQuantile(0.975, dof), q, 1e-4, `dof ${dof}`);
    close(studentTQuantile(0.025, 4), -2.7764, 1e-4);
  });
  it('rejects bad arguments', () => {
    assert.throws(() => studentTQuantile(1, 3), RangeError);
    assert.throws(() => studentTQuantile(0.9, 0), RangeError);
    assert.throws(() => incompleteBeta(1.5, 1, 1), RangeError);
  });
});

describe('eval/protocol: intervals and paired differences', () => {
  it('meanCI of three seeds uses t(0.975, 2)', () => {
    const c = meanCI([10, 12, 14]);
    assert.equal(c.n, 3);
    close(c.mean, 12, 1e-12);
    close(c.sd, 2, 1e-12);
    close(c.half, (4.302653 * 2) / Math.sqrt(3), 1e-5);
    close(c.lo, 12 - c.half, 1e-12);
  });
  it('one value has no interval', () => {
    const c = meanCI([5]);
    assert.equal(c.mean, 5);
    assert.ok(Number.isNaN(c.half));
    assert.equal(formatMeanCI(c), '5 (1 seed)');
    assert.throws(() => meanCI([]), RangeError);
    assert.throws(() => meanCI([1, NaN]), RangeError);
  });
  it('paired differences cancel the shared seed spread', () => {
    const base = new Map([[0, 100], [1, 140], [2, 120]]);
    const tdq = new Map([[0, 95], [1, 136], [2, 114], [7, 1]]);
    const p = pairedDifferences(tdq, base)!;
    assert.deepEqual(p.seeds, [0, 1, 2]);
    assert.deepEqual(p.diffs, [-5, -4, -6]);
    close(p.ci.mean, -5, 1e-12);
    // the unpaired intervals overlap, the paired one excludes 0
    assert.ok(p.ci.hi < 0);
    assert.ok(meanCI([...base.values()]).half > 20);
    assert.equal(pairedDifferences(new Map([[3, 1]]), base), null);
  });
  it('spread scaling recovers 1/sqrt(N)', () => {
    const pts = [1000, 2000, 5000].map((n) => ({ n, spread: 3 * Math.sqrt(1000 / n) }));
    const s = spreadScaling(pts);
    close(s.exponent, -0.5, 1e-12);
    close(s.predict(4000), 1.5, 1e-9);
    close(spreadAt(3, 1000, 4000), 1.5, 1e-12);
    assert.throws(() => spreadScaling([{ n: 10, spread: 1 }, { n: 10, spread: 2 }]), RangeError);
  });
  it('formats mean ± half width', () => {
    assert.equal(formatMeanCI(meanCI([10, 12, 14])), `12 ± ${Number(((4.302653 * 2) / Math.sqrt(3)).toPrecision(2))}`);
  });
});
