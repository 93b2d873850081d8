// Sampling split across ranks (src/dist/shard.ts): the batch plan covers every
// batch once, each sampler's noise is accounted per image so batch b starts
// where it does in one process, and under MPI `sample --nproc 2` writes the
// same PNGs and grid as one process (pixel and latent models, a stochastic
// sampler included) and `eval --nproc 2` reports the same FID.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { noiseDrawsPerValue, sample, type SampleOptions } from '../../src/diffusion/samplers';
import { makeSchedule } from '../../src/diffusion/schedule';
import { LocalCommunicator } from '../../src/dist/communicator';
import { batchesOfRank, drawBatch, generateBatches } from '../../src/dist/shard';
import { probeWritableDir } from '../../src/cli/commands/preflight';
import { scale } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { mpiSkip } from '../helpers/mpi';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const LATENT = path.join(root, 'test', 'fixtures', 'latent');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-sample-ranks-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: tmp, encoding: 'utf8', timeout: 240_000, env: { ...process.env, TDQ_NUM_THREADS: '1' } });
  return { code: r.status, out: `${r.stdout}\n${r.stderr}`, stdout: r.stdout };
}
const pngs = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.png')).sort();

function sameFolders(a: string, b: string): void {
  assert.deepEqual(pngs(a), pngs(b));
  for (const f of pngs(a)) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${f} differs between 1 and 2 ranks`);
}

describe('data-parallel sampling: the output folder', () => {
  it('a rank that finds --outdir made by another rank between its check and its mkdir goes on', () => {
    const dir = path.join(tmp, 'made-by-another-rank');
    fs.mkdirSync(dir);
    const exists = fs.existsSync;
    // The other rank's mkdir lands after this rank's existsSync: mkdir fails with EEXIST.
    (fs as { existsSync: typeof fs.existsSync }).existsSync = (p) => (path.resolve(String(p)) === dir ? false : exists(p));
    try {
      probeWritableDir(dir, 'outdir');
    } finally {
      (fs as { existsSync: typeof fs.existsSync }).existsSync = exists;
    }
    assert.throws(() => probeWritableDir(path.join(tmp, 'made-by-another-rank', 'x\0'), 'outdir'), /--outdir .* is not writable/);
  });
});

describe('data-parallel sampling: the batch plan', () => {
  it('every batch once, in order per rank, the last one short', () => {
    for (const [n, bs, size] of [[10, 4, 2], [12, 4, 3], [5, 8, 4], [1, 1, 1], [33, 5, 4]]) {
      const seen: number[] = [];
      let images = 0;
      for (let r = 0; r < size; ++r) {
        const slots = batchesOfRank(n, bs, r, size);
        for (const s of slots) {
          assert.equal(s.index % size, r);
          assert.equal(s.start, s.index * bs);
          seen.push(s.index);
          images += s.count;
        }
        assert.deepEqual(slots.map((s) => s.index), [...slots.map((s) => s.index)].sort((x, y) => x - y));
      }
      assert.deepEqual(seen.sort((x, y) => x - y), Array.from({ length: Math.ceil(n / bs) }, (_, i) => i), `${n}/${bs}/${size}`);
      assert.equal(images, n);
    }
    assert.throws(() => batchesOfRank(4, 2, 2, 2), /rank 2 of 2/);
    assert.throws(() => batchesOfRank(0, 2, 0, 1), /n must be a positive integer/);
  });

  it('noise draws per value, per sampler, equal what a batch takes from its Generator', async () => {
    const schedule = makeSchedule({ kind: 'linear', timesteps: 40 });
    const cases: [Omit<SampleOptions, 'shape'>, number][] = [
      [{ sampler: 'ddim', steps: 5, schedule }, 1],
      [{ sampler: 'ddim', steps: 5, eta: 1, schedule }, 6],
      [{ sampler: 'ddpm', schedule }, 41],
      [{ sampler: 'plms', steps: 5, schedule }, 1],
      [{ sampler: 'dpmpp', steps: 5, schedule }, 1],
    ];
    for (const [opts, expectedAtLeast] of cases) {
      const per = await noiseDrawsPerValue(opts);
      assert.ok(per >= 1 && per <= expectedAtLeast, `${opts.sampler} eta ${opts.eta ?? 0}: ${per} draws per value`);
      const gen = new Generator(3);
      const x = await sample((v) => scale(v, 0.5), { ...opts, shape: [3, 2, 2], generator: gen });
      x.dispose();
      assert.equal(gen.offset, per * 12, `${opts.sampler}: a (3, 2, 2) batch drew ${gen.offset}, accounted ${per * 12}`);
    }
    assert.equal(await noiseDrawsPerValue({ sampler: 'ddim', steps: 5, eta: 0, schedule }), 1, 'deterministic DDIM: x_T only');
    assert.equal(await noiseDrawsPerValue({ sampler: 'ddpm', schedule }), 40, 'DDPM: x_T and 39 noisy steps (none at t = 0)');
  });

  it('a batch that draws other than accounted is an internal error, not silently different images', async () => {
    const gen = new Generator(0);
    await assert.rejects(drawBatch(gen, 0, { index: 1, start: 2, count: 2 }, 3, async () => gen.randn([5]).dispose()), /batch 1 drew 5 normals, accounted 6/);
  });

  it('one rank: generateBatches is the plain batch loop (the generator runs on from batch to batch)', async () => {
    const drawn: number[] = [];
    const out = await generateBatches({ n: 5, batchSize: 2, seed: 7, imageSize: 1, drawsPerImage: 1, comm: new LocalCommunicator() }, async (slot, gen) => {
      drawn.push(gen.offset);
      const t = gen.randn([slot.count]);
      const d = Float32Array.from((await t.data()) as Float32Array);
      t.dispose();
      return d;
    });
    assert.deepEqual(drawn, [0, 2, 4]);
    const ref = new Generator(7).randn([5]);
    assert.deepEqual([...out], [...((await ref.data()) as Float32Array)]);
    ref.dispose();
  });
});

describe('data-parallel sampling over MPI', { skip: mpiSkip() }, () => {
  it('sample --nproc 2 writes the PNGs and grid of one process: pixel model, DDIM eta 1 (noise every step), 5 images in batches of 2', () => {
    const one = path.join(tmp, 'px1'), two = path.join(tmp, 'px2');
    const args = ['sample', '--n-samples', '5', '--batch-size', '2', '--custom-steps', '4', '--eta', '1', '--seed', '3', '--no-progress'];
    const r1 = cli([...args, '--outdir', one]);
    assert.equal(r1.code, 0, r1.out);
    const r2 = cli([...args, '--outdir', two, '--nproc', '2']);
    assert.equal(r2.code, 0, r2.out);
    assert.match(r2.stdout, /wrote 5 images and grid\.png .*2 ranks/);
    assert.equal(r2.stdout.match(/wrote/g)?.length, 1, 'one summary line (rank 0)');
    sameFolders(one, two);
  });

  it('sample --nproc 2 on a class-conditional latent model with guidance: the same images as one process', () => {
    const one = path.join(tmp, 'lat1'), two = path.join(tmp, 'lat2');
    const args = ['sample', '--base', path.join(LATENT, 'tiny_ldm_cond.yaml'), '--ckpt', path.join(LATENT, 'tiny_ldm_cond.ckpt'), '--n_samples', '5', '--batch_size', '2', '--custom_steps', '4', '--classes', '0,2', '--scale', '2', '--uncond-class', '3', '--no-progress'];
    assert.equal(cli([...args, '--logdir', one]).code, 0);
    const r2 = cli([...args, '--logdir', two, '--nproc', '2']);
    assert.equal(r2.code, 0, r2.out);
    sameFolders(one, two);
  });

  it('eval --ckpt --nproc 2: one report, the FID of one process', () => {
    const ref = path.join(tmp, 'ref');
    // A reference folder: the shipped model's own samples (another seed).
    assert.equal(cli(['sample', '--n-samples', '12', '--custom-steps', '4', '--seed', '9', '--outdir', ref, '--no-progress', '--no-grid']).code, 0);
    const args = ['eval', '--ckpt', path.join(root, 'models', 'fmnist-small.safetensors'), '--n', '12', '--batch-size', '4', '--steps', '4', '--dataset', ref, '--feature-net', 'fmnist', '--no-cache', '--no-progress'];
    const r1 = cli([...args, '--out', path.join(tmp, 'e1.json')]);
    assert.equal(r1.code, 0, r1.out);
    const r2 = cli([...args, '--out', path.join(tmp, 'e2.json'), '--nproc', '2']);
    assert.equal(r2.code, 0, r2.out);
    const [j1, j2] = ['e1.json', 'e2.json'].map((f) => JSON.parse(fs.readFileSync(path.join(tmp, f), 'utf8')));
    assert.equal(j2.metrics.fid.value, j1.metrics.fid.value);
    assert.equal(r2.stdout.match(/report:/g)?.length, 1, 'rank 0 alone writes the report');
  });

  it('eval --samples --nproc 2 is refused (nothing to split)', () => {
    const r = cli(['eval', '--samples', tmp, '--dataset', tmp, '--nproc', '2']);
    assert.notEqual(r.code, 0);
    assert.match(r.out, /--nproc splits the sampling of --ckpt/);
  });
});
