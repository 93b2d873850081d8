import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { featureStats, features } from '../../src/eval/metrics';
import { canonicalJson, fingerprintFiles, loadOrComputeStats, readStatsFile, statsKey, writeStatsFile } from '../../src/eval/stats_cache';
import { randomData } from '../helpers/assert';
import { torchUnavailable } from '../helpers/oracle';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-stats-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function makeFeatures(seed: number, n = 50, d = 6) {
  return features(randomData([n, d], seed), n, d);
}

describe('reference statistics cache', () => {
  it('writes and reads mean, covariance (float64, bit exact) and features', async () => {
    const f = makeFeatures(1);
    const s = featureStats(f);
    const file = path.join(tmp, 'rt.safetensors');
    await writeStatsFile(file, 'k1', { net: 'x', n: 50 }, s, f);
    const r = await readStatsFile(file, 'k1');
    assert.deepEqual([...r.stats.mu], [...s.mu]);
    assert.deepEqual([...r.stats.sigma], [...s.sigma]);
    assert.deepEqual([...r.features!.data], [...f.data]);
    assert.equal(r.stats.n, 50);
    assert.deepEqual(r.config, { n: 50, net: 'x' });
    await assert.rejects(readStatsFile(file, 'other'), /stats key k1 does not match other/);
  });

  it('is a safetensors file numpy can read', { skip: torchUnavailable() ?? false }, async () => {
    const f = makeFeatures(2);
    const s = featureStats(f);
    const file = path.join(tmp, 'np.safetensors');
    await writeStatsFile(file, 'k', {}, s);
    const py = `
import json, struct, sys, numpy as np
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
o = h['sigma']['data_offsets']
sig = np.frombuffer(b[8 + n + o[0]:8 + n + o[1]], dtype='<f8').reshape(h['sigma']['shape'])
print(repr(float(sig.sum())), h['__metadata__']['n'])`;
    const r = spawnSync('/usr/bin/python3', ['-c', py, file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const [sum, n] = r.stdout.trim().split(' ');
    let want = 0;
    for (const v of s.sigma) want += v;
    assert.ok(Math.abs(Number(sum) - want) <= 1e-12 * Math.abs(want) + 1e-15);
    assert.equal(n, '50');
  });

  it('fingerprints change with file contents, names and sizes, not with listing order', () => {
    const dir = path.join(tmp, 'data');
    fs.mkdirSync(dir, { recursive: true });
    const a = path.join(dir, 'a.png'), b = path.join(dir, 'b.png');
    fs.writeFileSync(a, 'aaaa');
    fs.writeFileSync(b, 'bbbb');
    const f1 = fingerprintFiles([a, b], { root: dir });
    assert.equal(fingerprintFiles([b, a], { root: dir }), f1);
    const c1 = fingerprintFiles([a, b], { root: dir, content: true });
    fs.writeFileSync(b, 'bbbc'); // same size, new bytes
    assert.notEqual(fingerprintFiles([a, b], { root: dir, content: true }), c1);
    fs.utimesSync(b, new Date(2001, 1, 1), new Date(2001, 1, 1));
    assert.notEqual(fingerprintFiles([a, b], { root: dir }), f1);
    assert.notEqual(fingerprintFiles([a], { root: dir }), fingerprintFiles([a, b], { root: dir }));
  });

  it('keys depend on the configuration, not on its key order', () => {
    assert.equal(canonicalJson({ b: 1, a: [1, { d: 2, c: 3 }] }), '{"a":[1,{"c":3,"d":2}],"b":1}');
    assert.equal(statsKey('fp', { a: 1, b: 2 }), statsKey('fp', { b: 2, a: 1 }));
    assert.notEqual(statsKey('fp', { a: 1 }), statsKey('fp', { a: 2 }));
    assert.notEqual(statsKey('fp', { a: 1 }), statsKey('fp2', { a: 1 }));
  });

  it('computes once, then serves from the cache; recomputes when data, config or needs change', async () => {
    const cacheDir = path.join(tmp, 'cache');
    let computed = 0;
    const logs: string[] = [];
    const req = (fingerprint: string, config: Record<string, unknown>, needFeatures: boolean, withFeatures = true) => ({
      cacheDir,
      name: 'fashion-mnist/fmnist',
      fingerprint,
      config,
      needFeatures,
      log: (m: string) => logs.push(m),
      compute: async () => {
        ++computed;
        const f = makeFeatures(10 + computed);
        return { stats: featureStats(f), features: withFeatures ? f : (undefined as never) };
      },
    });
    const first = await loadOrComputeStats(req('fp1', { n: 50 }, false));
    assert.equal(first.cached, false);
    assert.equal(computed, 1);
    assert.match(path.basename(first.file), /^fashion-mnist_fmnist-[0-9a-f]{32}\.safetensors$/);
    const second = await loadOrComputeStats(req('fp1', { n: 50 }, true));
    assert.equal(second.cached, true);
    assert.equal(computed, 1);
    assert.deepEqual([...second.stats.sigma], [...first.stats.sigma]);
    assert.ok(second.features);
    await loadOrComputeStats(req('fp2', { n: 50 }, false)); // the dataset changed
    assert.equal(computed, 2);
    await loadOrComputeStats(req('fp1', { n: 60 }, false)); // the configuration changed
    assert.equal(computed, 3);
    // A file without features does not serve a request that needs them.
    await loadOrComputeStats(req('fp3', {}, false, false));
    assert.equal(computed, 4);
    const again = await loadOrComputeStats(req('fp3', {}, true));
    assert.equal(again.cached, false);
    assert.equal(computed, 5);
    assert.ok(logs.some((l) => /lack the features needed/.test(l)));
    // A damaged file is ignored and rewritten.
    fs.writeFileSync(first.file, 'garbage');
    const healed = await loadOrComputeStats(req('fp1', { n: 50 }, false));
    assert.equal(healed.cached, false);
    assert.ok(logs.some((l) => /ignoring unreadable cache file/.test(l)));
    assert.equal((await loadOrComputeStats(req('fp1', { n: 50 }, false))).cached, true);
  });
});
