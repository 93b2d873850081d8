// Integer execution through the library (loadPipeline's exec option) and the
// CLI (`sample --exec int|fake`), on a quantized copy of the shipped model.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { DEFAULT_MODEL, loadPipeline } from '../../src/pipeline';
import { relError } from '../helpers/assert';

const BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');

function cli(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe('exec option of quantized checkpoints', () => {
  it("loadPipeline: 'auto' picks int, 'fake' fake-quantizes, the two agree; --exec in the CLI; errors for a float checkpoint", { timeout: 600_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-intexec-'));
    try {
      const ck = path.join(dir, 'w8a8.safetensors');
      const c = cli(['calibrate', '--ckpt', DEFAULT_MODEL, '--n-bit-w', '8', '--n-bit-a', '8', '--use-dynamic', '--n-samples', '2', '--steps', '5', '--fit-iters', '50', '--out', ck]);
      assert.equal(c.status, 0, c.out);

      const auto = await loadPipeline(ck);
      const fake = await loadPipeline(ck, { exec: 'fake' });
      try {
        assert.equal(auto.exec, 'int');
        assert.equal(auto.execNote, null);
        assert.equal(fake.exec, 'fake');
        const opts = { n: 2, steps: 4, seed: 3 };
        const a = await auto.generate(opts), f = await fake.generate(opts);
        // integer vs fake: equal up to float rounding per layer; level flips
        // amplified through 4 steps keep the images close, not bit-equal
        const e = relError(a.data, f.data);
        assert.ok(e < 0.05, `int vs fake images: relative L2 ${e}`);
      } finally {
        auto.dispose();
        fake.dispose();
      }
      await assert.rejects(loadPipeline(DEFAULT_MODEL, { exec: 'int' }), /exec 'int': .* is a full-precision checkpoint \(not quantized\)/);
      await assert.rejects(loadPipeline(ck, { exec: 'integer' as never }), /exec must be 'auto', 'int' or 'fake', got "integer"/);
      const f = (await loadPipeline(DEFAULT_MODEL));
      assert.equal(f.exec, null);
      f.dispose();

      const si = cli(['sample', '--ckpt', ck, '--n-samples', '1', '--custom-steps', '2', '--outdir', path.join(dir, 'si'), '--no-progress']);
      assert.equal(si.status, 0, si.out);
      assert.match(si.out, /quantized model, integer execution/);
      const sf = cli(['sample', '--ckpt', ck, '--exec', 'fake', '--n-samples', '1', '--custom-steps', '2', '--outdir', path.join(dir, 'sf'), '--no-progress']);
      assert.equal(sf.status, 0, sf.out);
      assert.match(sf.out, /quantized model, fake-quantized execution/);
      const bad = cli(['sample', '--exec', 'int', '--n-samples', '1', '--custom-steps', '2', '--outdir', path.join(dir, 'sb'), '--no-progress']);
      assert.notEqual(bad.status, 0);
      assert.match(bad.out, /--exec int: .*fmnist-small.safetensors is a full-precision checkpoint \(not quantized\); drop --exec/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
