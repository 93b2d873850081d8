// `tdq-native sample --base LDM_CONFIG.yaml --ckpt MODEL.ckpt` end to end on the
// tiny torch.save LDM fixtures (test/reference/ldm_ckpt_ref.py): decoded PNGs
// and grid.png, the same images for the same seed (and as the library's
// generate()), upstream sample_diffusion's flag names, and clear errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { encodePng, readPngHeader } from '../../src/io/png';
import { loadLatentPipeline } from '../../src/pipeline';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const DIR = path.join(root, 'test', 'fixtures', 'latent');
const COND = ['--base', path.join(DIR, 'tiny_ldm_cond.yaml'), '--ckpt', path.join(DIR, 'tiny_ldm_cond.ckpt')];
const UNCOND = ['--base', path.join(DIR, 'tiny_ldm_uncond.yaml'), '--ckpt', path.join(DIR, 'tiny_ldm_uncond.ckpt')];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-sample-latent-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [bin, 'sample', '--no-progress', ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
const pngs = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\d+\.png$/.test(f)).sort() : []);

describe('sample: latent diffusion models', () => {
  it('class-conditional, guided, with upstream\'s flag names: PNGs of the decoded size and grid.png; same seed, same images, = generate()', async () => {
    const args = (out: string, seed: number) => [...COND, '--n_samples', '5', '--batch_size', '2', '--custom_steps', '4', '--classes', '0,2', '--scale', '2', '--uncond-class', '3', '--seed', String(seed), '--logdir', out];
    const a = path.join(tmp, 'a'), b = path.join(tmp, 'b'), c = path.join(tmp, 'c');
    const r = run(args(a, 4));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote 5 images and grid\.png to .* \(latent diffusion, ddim, 4 steps, classes 0,2, scale 2 against class 3, EMA weights/);
    assert.deepEqual(pngs(a), ['000000.png', '000001.png', '000002.png', '000003.png', '000004.png']);
    for (const f of pngs(a)) {
      const h = readPngHeader(path.join(a, f));
      assert.deepEqual([h.channels, h.height, h.width], [1, 16, 16]);
    }
    assert.ok(fs.existsSync(path.join(a, 'grid.png')));
    assert.equal(run(args(b, 4)).code, 0);
    assert.equal(run(args(c, 5)).code, 0);
    for (const f of pngs(a)) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${f}: same seed, same image`);
    assert.ok(pngs(a).some((f) => !fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(c, f)))), 'another seed, other images');
    // The library, batch by batch as the command: the same PNG bytes.
    const pipe = await loadLatentPipeline(COND[3], { config: COND[1] });
    const imgs = [...(await pipe.generate({ n: 2, batchSize: 2, seed: 4, steps: 4, classes: [0, 2], scale: 2, uncondClass: 3 })).data];
    pipe.dispose();
    for (let i = 0; i < 2; ++i) assert.ok(encodePng(imgs, [1, 16, 16], i * 256).equals(fs.readFileSync(path.join(a, pngs(a)[i]))), `image ${i} = generate()`);
  });

  it('unconditional: --vanilla_sample is the ddpm sampler; --eta with ddim', () => {
    const out = path.join(tmp, 'u');
    const r = run([...UNCOND, '--n_samples', '2', '--custom_steps', '4', '--eta', '1', '--logdir', out, '--no-grid']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote 2 images to .* \(latent diffusion, ddim, 4 steps, EMA weights/);
    assert.equal(pngs(out).length, 2);
    const v = path.join(tmp, 'v');
    const rv = run([...UNCOND, '--n_samples', '1', '--vanilla_sample', '--logdir', v, '--no-grid', '--no-ema']);
    assert.equal(rv.code, 0, rv.stderr);
    assert.match(rv.stdout, /\(latent diffusion, ddpm, 1000 steps,/);
    assert.doesNotMatch(rv.stdout, /EMA/);
    assert.equal(pngs(v).length, 1);
  });

  const bad: [string, string[], RegExp][] = [
    ['--classes on an unconditional model', [...UNCOND, '--classes', '1'], /--classes 1: this model is unconditional/],
    ['--scale without an unconditional class', [...COND, '--scale', '3'], /--scale 3: .*no known unconditional class; name it with --uncond-class/],
    ['--scale on an unconditional model', [...UNCOND, '--scale', '3'], /--scale 3: .*this model is unconditional/],
    ['a class the model does not have', [...COND, '--classes', '0,7'], /--classes: 7 is not a class of this model \(0\.\.3\)/],
    ['--classes that are not numbers', [...COND, '--classes', '0,a'], /--classes must be comma-separated class labels/],
    ['--class (the pixel flag) on a latent model', [...COND, '--class', '1'], /--class is for pixel models; a latent model takes --classes/],
    ['--vanilla_sample with another sampler', [...UNCOND, '--vanilla_sample', '--sampler', 'ddim'], /--vanilla_sample is the ddpm sampler; it contradicts --sampler ddim/],
    ['--custom_steps with --vanilla_sample', [...UNCOND, '--vanilla_sample', '--custom_steps', '20'], /--custom-steps does not apply to --sampler ddpm/],
    ['--classes on a pixel model', ['--classes', '1'], /--classes applies to latent diffusion models/],
  ];
  for (const [name, args, re] of bad) {
    it(`error: ${name}`, () => {
      const out = path.join(tmp, `bad-${name.replace(/\W+/g, '-')}`);
      const r = run([...args, '--n_samples', '1', '--logdir', out]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, re);
      assert.deepEqual(pngs(out), []);
    });
  }
});
