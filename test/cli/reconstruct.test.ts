// `tdq-native reconstruct`: a tiny KL autoencoder written here (config and
// .safetensors weights), a folder of PNGs; the reconstructions are the
// model's decode(mode(encode(x))), written under the same relative names,
// and the printed PSNR is theirs. Bad input: clear errors naming the file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { psnr, reconstruct } from '../../src/cli/commands/reconstruct';
import { writeSafetensors } from '../../src/io/safetensors';
import { readPng, writePngSync } from '../../src/io/png';
import { AutoencoderKL } from '../../src/models/autoencoder';
import { full } from '../../src/tensor/ops/creation';
import { clamp } from '../../src/tensor/ops/elementwise';
import { Generator } from '../../src/tensor/random';
import { fromArray } from '../../src/tensor/tensor';
import { tinyDdconfig, tinyKlYaml } from '../helpers/configs';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-rec-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const DD = tinyDdconfig({ z_channels: 2, resolution: 8 });
const YAML_TEXT = tinyKlYaml({ embedDim: 2, baseLr: '4.5e-6', lossParams: '{ disc_start: 1, kl_weight: 1.0e-6 }', ddconfig: DD });

/** 8x8 gray test images: smooth ramps, values on the byte grid. */
function image(k: number): Float32Array {
  const d = new Float32Array(64);
  for (let i = 0; i < 64; ++i) d[i] = Math.round(((Math.sin(0.3 * i + k) + 1) / 2) * 255) / 127.5 - 1;
  return d;
}

async function setup() {
  const cfg = path.join(tmp, 'ae.yaml');
  fs.writeFileSync(cfg, YAML_TEXT);
  const model = new AutoencoderKL({ ddconfig: DD, embed_dim: 2 }, new Generator(3));
  const dict = new Map(model.stateDict());
  dict.set('loss.logvar', full([], 0)); // upstream checkpoints carry the loss's tensors: skipped
  const ckpt = path.join(tmp, 'ae.safetensors');
  await writeSafetensors(ckpt, dict);
  const imgs = path.join(tmp, 'imgs');
  fs.mkdirSync(path.join(imgs, 'sub'), { recursive: true });
  const names = ['a.png', 'b.png', path.join('sub', 'c.png')];
  names.forEach((n, k) => writePngSync(path.join(imgs, n), image(k), [1, 8, 8]));
  return { cfg, ckpt, imgs, names, model };
}

describe('tdq-native reconstruct', () => {
  it('writes decode(mode(encode(x))) for each PNG under its relative name and prints their PSNR', async () => {
    const { cfg, ckpt, imgs, names, model } = await setup();
    const out = path.join(tmp, 'out');
    const r = run(['reconstruct', '--base', cfg, '--ckpt', ckpt, '--images', imgs, '--outdir', out, '--batch-size', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /reconstructed 3 images \(8x8x1\)/);
    const m = /PSNR: mean (-?[\d.]+) dB, min (-?[\d.]+) dB, max (-?[\d.]+) dB/.exec(r.stdout);
    assert.ok(m, r.stdout);
    model.eval();
    const scores: number[] = [];
    for (const [k, n] of names.entries()) {
      const x = readPng(path.join(imgs, n), { channels: 1 });
      const rec = (await clamp(reconstruct(model, fromArray(x.data, [1, 1, 8, 8])), -1, 1).data()) as Float32Array;
      scores.push(psnr(rec, image(k)));
      const written = readPng(path.join(out, n), { channels: 1 });
      for (let i = 0; i < 64; ++i) assert.ok(Math.abs(written.data[i] - rec[i]) <= 1 / 127.5 + 1e-6, `${n}[${i}]: ${written.data[i]} vs ${rec[i]}`);
    }
    const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
    assert.ok(Math.abs(Number(m[1]) - mean) < 0.006, `printed mean ${m[1]} vs ${mean}`);
    assert.ok(Math.abs(Number(m[2]) - Math.min(...scores)) < 0.006);
    assert.ok(Math.abs(Number(m[3]) - Math.max(...scores)) < 0.006);
    model.dispose();
  });

  it('psnr: 10 log10(4 / MSE) for [-1, 1] images', () => {
    assert.equal(psnr([0, 0], [0, 0]), Infinity);
    assert.ok(Math.abs(psnr([1, 1], [0.9, 1.1]) - 10 * Math.log10(4 / 0.01)) < 1e-9);
  });

  it('bad input: a .ckpt, a missing folder, images of different sizes, wrong weights', async () => {
    const { cfg, ckpt, imgs } = await setup();
    const out = path.join(tmp, 'out2');
    const pt = path.join(tmp, 'ae.ckpt');
    fs.writeFileSync(pt, 'x');
    let r = run(['reconstruct', '--base', cfg, '--ckpt', pt, '--images', imgs, '--outdir', out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /ae\.ckpt/);
    assert.match(r.stderr, /not a PyTorch checkpoint|zip|pickle|torch/i);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack');
    r = run(['reconstruct', '--base', cfg, '--ckpt', ckpt, '--images', path.join(tmp, 'nope'), '--outdir', out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--images .*nope: not a folder/);
    const odd = path.join(tmp, 'odd');
    fs.mkdirSync(odd);
    writePngSync(path.join(odd, 'a.png'), image(0), [1, 8, 8]);
    writePngSync(path.join(odd, 'b.png'), new Float32Array(16 * 8), [1, 16, 8]);
    r = run(['reconstruct', '--base', cfg, '--ckpt', ckpt, '--images', odd, '--outdir', out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /b\.png: 8x16 differs from 8x8/);
    const other = new AutoencoderKL({ ddconfig: { ...DD, ch_mult: [1, 2, 2] }, embed_dim: 2 });
    const wrong = path.join(tmp, 'wrong.safetensors');
    await writeSafetensors(wrong, other.stateDict());
    r = run(['reconstruct', '--base', cfg, '--ckpt', wrong, '--images', imgs, '--outdir', out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /wrong\.safetensors/);
    assert.match(r.stderr, /unexpected|missing|shape/i);
    other.dispose();
  });
});
