// The shipped latent diffusion model end to end through the CLI:
// `sample --model fmnist-ldm --classes 0,7,9` writes the PNGs and the grid,
// and the shipped Fashion-MNIST classifier recognises the asked-for garment
// (t-shirt/top, sneaker, ankle boot) in most of them. --model's errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { loadFeatureNet } from '../../src/eval/run';
import { readPng } from '../../src/io/png';
import { noGrad } from '../../src/tensor/autograd';
import { fromArray } from '../../src/tensor/tensor';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-fmnist-ldm-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[], cwd = tmp) {
  const r = spawnSync(process.execPath, [bin, 'sample', '--no-progress', ...args], { encoding: 'utf8', timeout: 120_000, cwd });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('sample --model fmnist-ldm (the shipped latent model)', () => {
  it('classes 0,7,9 from another directory: 12 PNGs and grid.png, and the classifier sees t-shirts, sneakers and ankle boots', async () => {
    const out = path.join(tmp, 'out');
    const r = run(['--model', 'fmnist-ldm', '--classes', '0,7,9', '--n-samples', '12', '--batch-size', '12', '--steps', '20', '--seed', '1', '--outdir', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote 12 images and grid\.png to .* \(latent diffusion, ddim, 20 steps, classes 0,7,9/);
    const files = fs.readdirSync(out).filter((f) => /^\d+\.png$/.test(f)).sort();
    assert.equal(files.length, 12);
    assert.ok(fs.existsSync(path.join(out, 'grid.png')));
    const data = new Float32Array(12 * 32 * 32);
    files.forEach((f, i) => {
      const img = readPng(path.join(out, f));
      assert.deepEqual([img.channels, img.height, img.width], [1, 32, 32]);
      data.set(img.data, i * 1024);
    });
    const net = await loadFeatureNet('fmnist');
    const o = noGrad(() => net.run(fromArray(data, [12, 1, 32, 32])));
    const l = (await o.logits.data()) as Float32Array;
    const want = [0, 7, 9];
    const got = Array.from({ length: 12 }, (_, i) => {
      let best = 0;
      for (let k = 1; k < 10; ++k) if (l[i * 10 + k] > l[i * 10 + best]) best = k;
      return best;
    });
    o.features.dispose();
    o.logits.dispose();
    net.dispose();
    const hits = got.filter((g, i) => g === want[i % 3]).length;
    console.log(`# classifier on --classes 0,7,9 (cycled): ${got.join(',')}: ${hits}/12`);
    assert.ok(hits >= 9, `the classifier recognised only ${hits} of 12 samples as their class (got ${got.join(',')})`);
  });

  it('--model with --ckpt or --base, or an unknown name: a clear error', () => {
    const a = run(['--model', 'fmnist-ldm', '--ckpt', 'x.safetensors', '-n', '1']);
    assert.equal(a.code, 1);
    assert.match(a.stderr, /--model fmnist-ldm names the weights and the config: drop --ckpt \/ --base/);
    const b = run(['--model', 'fmnist-ldm', '--base', 'configs/fmnist-ldm.yaml', '-n', '1']);
    assert.equal(b.code, 1);
    assert.match(b.stderr, /drop --ckpt \/ --base/);
    const c = run(['--model', 'nope', '-n', '1']);
    assert.equal(c.code, 1);
    assert.match(c.stderr, /--model: unknown model 'nope'; shipped models: fmnist-small, fmnist-ldm/);
  });
});
