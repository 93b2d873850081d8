// The 'int' weights format through the CLI on the shipped model: calibrate
// --weights-format, convert --weights-format, and sample --exec int|fake
// writing the same images from either file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { inspectSafetensors } from '../../src/io/safetensors';
import { DEFAULT_MODEL } from '../../src/pipeline';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');

function cli(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

function ok(args: string[]): string {
  const r = cli(args);
  assert.equal(r.status, 0, `tdq-native ${args.join(' ')}:\n${r.out}`);
  return r.out;
}

function pngs(dir: string): Buffer[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.png')).sort().map((f) => fs.readFileSync(path.join(dir, f)));
}

describe('quantized checkpoints with int weights through the CLI', () => {
  it('calibrate writes int weights by default; convert switches formats; sample --exec int and fake give the same images from either', { timeout: 600_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-wfmt-cli-'));
    try {
      const f = path.join(dir, 'w4-float.safetensors'), i = path.join(dir, 'w4-int.safetensors'), d = path.join(dir, 'w4-default.safetensors');
      const calib = ['calibrate', '--ckpt', DEFAULT_MODEL, '--n-bit-w', '4', '--n-bit-a', '8', '--use-dynamic', '--n-samples', '2', '--steps', '5', '--fit-iters', '50'];
      ok([...calib, '--weights-format', 'float', '--out', f]);
      ok([...calib, '--out', d]);
      const conv = ok(['convert', f, i, '--weights-format', 'int']);
      assert.match(conv, /\(float weights, \d+ bytes\) -> .*w4-int\.safetensors \(int weights, \d+ bytes, 0\.\d+x\)/);
      // calibrate's default output is that very file, byte for byte (same seed, same weights)
      const hi = await inspectSafetensors(i), hd = await inspectSafetensors(d);
      assert.equal(hd.metadata?.quant_weights, 'int');
      assert.deepEqual([...hd.tensors.keys()].sort(), [...hi.tensors.keys()].sort());
      assert.equal(fs.statSync(d).size < fs.statSync(f).size * 0.6, true);

      for (const exec of ['int', 'fake']) {
        const run = (ck: string, out: string) => ok(['sample', '--ckpt', ck, '--exec', exec, '--n-samples', '3', '--custom-steps', '4', '--seed', '5', '--outdir', path.join(dir, out), '--no-progress']);
        run(f, `s-float-${exec}`);
        run(i, `s-int-${exec}`);
        const a = pngs(path.join(dir, `s-float-${exec}`)), b = pngs(path.join(dir, `s-int-${exec}`));
        assert.equal(a.length, 4); // 3 samples and the grid
        assert.deepEqual(b, a, `--exec ${exec}: images differ between the float and int weights files`);
      }

      // and back: int -> float, then the float file loads as any quantized checkpoint
      const back = path.join(dir, 'back.safetensors');
      assert.match(ok(['convert', i, back, '--weights-format', 'float']), /\(int weights, .*\(float weights/);
      assert.equal((await inspectSafetensors(back)).metadata?.quant_weights, 'float');
      const bad = cli(['convert', DEFAULT_MODEL, path.join(dir, 'x.safetensors'), '--weights-format', 'int']);
      assert.equal(bad.status, 1);
      assert.match(bad.out, /convert --weights-format: .*fmnist-small\.safetensors is not a quantized checkpoint/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
