import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadConfig } from '../../src/config';
import { FashionMnistDataset } from '../../src/data/fashion_mnist';
import { defaultFmnistClassifierPath, fmnistClassifierExists } from '../../src/eval/fmnist_classifier';
import { InceptionV3 } from '../../src/eval/inception';
import { writeSafetensors } from '../../src/io/safetensors';
import { writePngSync } from '../../src/io/png';
import { buildUNet } from '../../src/models/diffusion';
import { Generator } from '../../src/tensor/random';
import { saveCheckpoint } from '../../src/train/checkpoint';
import { randomData } from '../helpers/assert';
import { fmnistSkip } from '../helpers/datasets';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-eval-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

// Without the dataset these tests skip with the reason (under CI=true they run and fail).
const noFmnist = fmnistSkip();
const skipFmnist = noFmnist || (!fmnistClassifierExists() ? 'models/fmnist-classifier.safetensors is missing' : false);

const ENTRY = path.join(__dirname, 'eval_cli_entry.js');

/** Runs the CLI (with the eval command) in a child process; returns the exit code, stdout and stderr. */
async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [ENTRY, ...argv], { encoding: 'utf8', env: { ...process.env, TDQ_CACHE_DIR: path.join(tmp, 'default-cache') } }, (error, out, err) => {
      if (error && typeof error.code !== 'number') reject(error);
      else resolve({ code: error ? (error.code as number) : 0, out, err });
    });
  });
}

/** n Fashion-MNIST test images padded to 32 x 32 (as the fmnist-small model makes them), from index `from`. */
function writeFmnistPngs(dir: string, n: number, from = 0): void {
  fs.mkdirSync(dir, { recursive: true });
  const ds = new FashionMnistDataset({ split: 'test', size: 32, fit: { mode: 'pad' } });
  for (let i = 0; i < n; ++i) writePngSync(path.join(dir, `${String(i).padStart(5, '0')}.png`), ds.get(from + i), [1, 32, 32]);
}

function writeNoisePngs(dir: string, n: number, size = 32, seed = 1): void {
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < n; ++i) writePngSync(path.join(dir, `noise-${i}.png`), randomData([1, size, size], seed + i, 0.7), [1, size, size]);
}

describe('tdq-native eval with the Fashion-MNIST classifier', { skip: skipFmnist }, () => {
  const real = path.join(tmp, 'real'), noise = path.join(tmp, 'noise'), cache = path.join(tmp, 'cache');
  before(() => {
    writeFmnistPngs(real, 300, 5000);
    writeNoisePngs(noise, 300);
  });

  it('prints a table and writes a JSON report; the reference statistics are cached', async () => {
    const out = path.join(tmp, 'r1.json');
    const args = ['eval', '--samples', real, '--dataset', 'fashion-mnist', '--split', 'test', '--ref-n', '1000',
      '--metrics', 'fid,is,kid,pr', '--kid-subsets', '10', '--cache-dir', cache, '--out', out, '--no-progress'];
    const r = await run(args);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^metric\s+value\s+detail/m);
    for (const name of ['FID-FMNIST', 'KID-FMNIST', 'IS-FMNIST', 'precision', 'recall']) assert.match(r.out, new RegExp(`^${name}\\s`, 'm'));
    assert.match(r.out, /note: .*not comparable to Inception/);
    assert.match(r.out, /centre-cropped to the reference 28x28/);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    assert.equal(j.samples.n, 300);
    assert.deepEqual(j.samples.size, [1, 32, 32]);
    assert.equal(j.reference.n, 1000);
    assert.equal(j.reference.cached, false);
    assert.equal(j.featureNet.net, 'fmnist-classifier-v1');
    assert.equal(j.metricNames.fid, 'FID-FMNIST');
    assert.equal(j.metrics.kid.subsetSize, 300);
    assert.ok(j.metrics.fid.value > 0 && Number.isFinite(j.metrics.fid.value));
    assert.ok(j.metrics.is.mean > 1 && j.metrics.is.mean <= 10, `IS-FMNIST ${j.metrics.is.mean} within (1, 10]`);
    // Real test images lie on the real manifold: high precision and recall.
    assert.ok(j.metrics.pr.precision > 0.8 && j.metrics.pr.recall > 0.5, JSON.stringify(j.metrics.pr));
    const again = await run([...args.slice(0, -3), '--out', path.join(tmp, 'r2.json'), '--no-progress']);
    assert.equal(again.code, 0, again.err);
    const j2 = JSON.parse(fs.readFileSync(path.join(tmp, 'r2.json'), 'utf8'));
    assert.equal(j2.reference.cached, true);
    assert.equal(j2.metrics.fid.value, j.metrics.fid.value);
    assert.deepEqual(j2.metrics.kid, j.metrics.kid);
  });

  it('--no-cache neither reads nor writes the statistics cache', async () => {
    const none = path.join(tmp, 'no-cache-dir');
    const r = await run(['eval', '--samples', real, '--dataset', 'fashion-mnist', '--split', 'test', '--ref-n', '200', '--metrics', 'fid',
      '--cache-dir', none, '--no-cache', '--out', path.join(tmp, 'nc.json'), '--no-progress']);
    assert.equal(r.code, 0, r.err);
    assert.equal(JSON.parse(fs.readFileSync(path.join(tmp, 'nc.json'), 'utf8')).reference.statsCache, undefined);
    assert.ok(!fs.existsSync(none) || fs.readdirSync(none).length === 0, 'nothing written to the cache folder');
  });

  it('ranks noise far behind real images', async () => {
    const common = ['--dataset', 'fashion-mnist', '--split', 'test', '--ref-n', '1000', '--metrics', 'fid,kid', '--kid-subsets', '5', '--cache-dir', cache, '--no-progress'];
    const a = await run(['eval', '--samples', real, ...common, '--out', path.join(tmp, 'a.json')]);
    const b = await run(['eval', '--samples', noise, ...common, '--out', path.join(tmp, 'b.json')]);
    assert.equal(a.code, 0, a.err);
    assert.equal(b.code, 0, b.err);
    const fa = JSON.parse(fs.readFileSync(path.join(tmp, 'a.json'), 'utf8')).metrics;
    const fb = JSON.parse(fs.readFileSync(path.join(tmp, 'b.json'), 'utf8')).metrics;
    assert.ok(fb.fid.value > 10 * fa.fid.value, `FID-FMNIST noise ${fb.fid.value} vs real ${fa.fid.value}`);
    assert.ok(fb.kid.mean > 10 * Math.max(fa.kid.mean, 1e-4), `KID-FMNIST noise ${fb.kid.mean} vs real ${fa.kid.mean}`);
  });

  it('--ckpt generates the images itself (a tiny untrained model, 2 DDIM steps)', async () => {
    const overrides = ['model_channels=32', 'channel_mult=[1]', 'attention_resolutions=[]'].map((o) => `model.params.unet_config.params.${o}`);
    const { config } = loadConfig(path.resolve(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), { overrides });
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    const ckpt = path.join(tmp, 'tiny.safetensors');
    await saveCheckpoint(ckpt, { config, model: unet });
    unet.dispose();
    const out = path.join(tmp, 'ckpt.json');
    const r = await run(['eval', '--ckpt', ckpt, '--n', '12', '--steps', '2', '--batch-size', '6', '--dataset', 'fashion-mnist', '--split', 'test',
      '--ref-n', '1000', '--metrics', 'fid', '--cache-dir', cache, '--out', out, '--no-progress']);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    assert.deepEqual(j.generation, { ckpt, n: 12, sampler: 'ddim', steps: 2, eta: 0, seed: 0 });
    assert.deepEqual(j.samples.size, [1, 32, 32]);
    assert.ok(j.metrics.fid.value > 0);
    assert.equal(j.reference.cached, true); // same reference configuration as the first test
    const both = await run(['eval', '--ckpt', ckpt, '--samples', real]);
    assert.equal(both.code, 1);
    assert.match(both.err, /pass either --samples or --ckpt, not both/);
    const missing = await run(['eval', '--ckpt', path.join(tmp, 'nope.safetensors'), '--dataset', 'fashion-mnist']);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /checkpoint not found: .*nope.safetensors/);
  });

  it('IS alone needs no reference; --n limits the generated images', async () => {
    const r = await run(['eval', '--samples', real, '--metrics', 'is', '--feature-net', 'fmnist', '--n', '100', '--out', path.join(tmp, 'is.json'), '--no-progress']);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(fs.readFileSync(path.join(tmp, 'is.json'), 'utf8'));
    assert.equal(j.samples.n, 100);
    assert.equal(j.reference, undefined);
  });
});

describe('tdq-native eval with the Inception network (random weights)', () => {
  it('runs FID, IS (1008 classes), KID and precision/recall on RGB folders; a wrong weights file is refused', async () => {
    const weights = path.join(tmp, 'inception-random.safetensors');
    const net = new InceptionV3({ seed: 11 });
    await writeSafetensors(weights, net.stateDict());
    net.dispose();
    const gen = path.join(tmp, 'rgb-gen'), ref = path.join(tmp, 'rgb-ref');
    for (const [dir, seed] of [[gen, 100], [ref, 200]] as const) {
      fs.mkdirSync(dir, { recursive: true });
      for (let i = 0; i < 10; ++i) writePngSync(path.join(dir, `${i}.png`), randomData([3, 24, 24], seed + i, 0.5), [3, 24, 24]);
    }
    const out = path.join(tmp, 'inception.json');
    const r = await run(['eval', '--samples', gen, '--dataset', ref, '--inception-weights', weights, '--metrics', 'fid,is,kid,pr',
      '--is-splits', '2', '--kid-subsets', '3', '--resize', 'tf1', '--batch-size', '5', '--cache-dir', path.join(tmp, 'cache-inc'), '--out', out, '--no-progress']);
    assert.equal(r.code, 0, r.err);
    for (const name of ['FID', 'KID', 'IS']) assert.match(r.out, new RegExp(`^${name}\\s`, 'm'));
    assert.doesNotMatch(r.out, /FMNIST/);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    assert.equal(j.featureNet.net, 'inception-v3-fid-2015-12-05');
    assert.equal(j.featureNet.resize, 'tf1');
    assert.match(j.featureNet.sha256, /^[0-9a-f]{64}$/);
    assert.equal(j.metrics.kid.subsetSize, 10);
    assert.ok(j.metrics.is.mean >= 1 && j.metrics.fid.value > 0);
    assert.ok(j.notes.some((n: string) => /covariances are singular/.test(n)));
    const wrong = await run(['eval', '--samples', gen, '--dataset', ref, '--inception-weights', defaultFmnistClassifierPath(), '--no-progress']);
    assert.equal(wrong.code, 1);
    assert.match(wrong.err, /does not hold the FID Inception weights .*missing keys/s);
  });
});

describe('tdq-native eval: bad input', () => {
  it('names the problem', async () => {
    const one = path.join(tmp, 'one');
    writeNoisePngs(one, 1, 28);
    const cases: [string[], RegExp][] = [
      [['eval', '--dataset', 'fashion-mnist'], /eval needs --samples DIR \(a folder of generated PNG images\) or --ckpt FILE/],
      [['eval', '--samples', one, '--metrics', 'fid,bogus'], /unknown metric bogus in --metrics \(choose from fid, is, kid, pr\)/],
      [['eval', '--samples', one, '--dataset', one], /the Inception feature network needs its weights: pass --inception-weights FILE/],
      [['eval', '--samples', one, '--dataset', one, '--inception-weights', path.join(tmp, 'missing.safetensors')], /Inception weights not found: .*missing.safetensors/],
      [['eval', '--samples', one, '--metrics', 'kid'], /--metrics kid needs reference images \(--dataset DIR or fashion-mnist\)/],
      [['eval', '--samples', one, '--n', '0'], /--n must be a positive integer, got 0/],
      [['eval', '--samples', one, '--dataset', one, '--feature-net', 'fmnist', '--classifier-weights', path.join(tmp, 'none.safetensors')], /Fashion-MNIST classifier weights not found/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(argv);
      assert.equal(r.code, 1, `${argv.join(' ')} should fail`);
      assert.match(r.err, re, `${argv.join(' ')}: ${r.err}`);
    }
  });

  it('names the problem with the samples folder (Fashion-MNIST as the reference, read first)', { skip: noFmnist }, async () => {
    const mixed = path.join(tmp, 'mixed2');
    writeNoisePngs(mixed, 3, 32);
    writePngSync(path.join(mixed, 'zz-odd.png'), randomData([1, 28, 28], 9), [1, 28, 28]);
    const empty = path.join(tmp, 'empty2');
    fs.mkdirSync(empty, { recursive: true });
    const cases: [string[], RegExp][] = [
      [['eval', '--samples', mixed, '--dataset', 'fashion-mnist'], /images in .*mixed2 differ in size: zz-odd.png is 28x28 but noise-0.png is 32x32/],
      [['eval', '--samples', empty, '--dataset', 'fashion-mnist'], /no \*\.png images under .*empty2/],
      [['eval', '--samples', path.join(tmp, 'nope'), '--dataset', 'fashion-mnist'], /image folder not found: .*nope/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(argv);
      assert.equal(r.code, 1, `${argv.join(' ')} should fail`);
      assert.match(r.err, re, `${argv.join(' ')}: ${r.err}`);
    }
  });

  it('too few images and size mismatches against the reference', { skip: skipFmnist }, async () => {
    const one = path.join(tmp, 'one');
    const big = path.join(tmp, 'big');
    writeNoisePngs(big, 12, 64);
    const cases: [string[], RegExp][] = [
      [['eval', '--samples', one, '--dataset', 'fashion-mnist', '--ref-n', '50'], /too few generated images: 1, FID \(a covariance\) needs at least 2/],
      [['eval', '--samples', big, '--metrics', 'is', '--feature-net', 'fmnist', '--is-splits', '20'], /too few generated images: 12, IS with 20 splits needs at least 20/],
      [['eval', '--samples', big, '--dataset', 'fashion-mnist', '--n', '13'], /--n 13 asks for more generated images than there are: 12/],
      [['eval', '--samples', big, '--dataset', 'fashion-mnist', '--ref-n', '50'], /generated images are 64x64 but the reference images are 28x28.*--allow-size-mismatch/],
      [['eval', '--samples', big, '--dataset', 'fashion-mnist', '--ref-n', '50', '--allow-size-mismatch', '--metrics', 'kid', '--kid-subset-size', '20'], /too few images for KID subsets of 20: 12 generated, 50 reference/],
    ];
    for (const [argv, re] of cases) {
      const r = await run([...argv, '--no-progress', '--cache-dir', path.join(tmp, 'cache2'), '--out', path.join(tmp, 'x.json')]);
      assert.equal(r.code, 1, `${argv.join(' ')} should fail`);
      assert.match(r.err, re, `${argv.join(' ')}: ${r.err}`);
    }
    // With --allow-size-mismatch the 64x64 set is resized by the classifier.
    const ok = await run(['eval', '--samples', big, '--dataset', 'fashion-mnist', '--ref-n', '50', '--allow-size-mismatch', '--no-progress', '--cache-dir', path.join(tmp, 'cache2'), '--out', path.join(tmp, 'x.json')]);
    assert.equal(ok.code, 0, ok.err);
  });
});
