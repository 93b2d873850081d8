// Shipped models by name (--model) and the first stage's ckpt_path resolved
// from any working directory (cwd first, as upstream, then the package root).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { resolveFirstStagePath } from '../../src/models/latent';
import { SHIPPED_MODELS, UnknownModelError, resolveShippedModel } from '../../src/models/registry';

const root = path.resolve(__dirname, '..', '..', '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-registry-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('shipped models by name', () => {
  it('fmnist-ldm: the weights and the LDM config under the package root; fmnist-small: weights only', () => {
    const m = resolveShippedModel('fmnist-ldm');
    assert.equal(m.ckpt, path.join(root, 'models', 'fmnist-ldm.safetensors'));
    assert.equal(m.config, path.join(root, 'configs', 'fmnist-ldm.yaml'));
    assert.ok(fs.existsSync(m.ckpt) && fs.existsSync(m.config!));
    assert.deepEqual(resolveShippedModel('fmnist-small'), { ckpt: path.join(root, 'models', 'fmnist-small.safetensors') });
  });

  it('an unknown name lists the shipped ones; a missing file is named', () => {
    assert.throws(() => resolveShippedModel('fmnist-huge'), (e: unknown) => e instanceof UnknownModelError && /unknown model 'fmnist-huge'; shipped models: fmnist-small, fmnist-ldm/.test((e as Error).message));
    assert.throws(() => resolveShippedModel('__proto__'), UnknownModelError);
    assert.throws(() => resolveShippedModel('fmnist-ldm', tmp), /model 'fmnist-ldm': .*fmnist-ldm\.safetensors is missing from the package/);
    assert.ok(Object.keys(SHIPPED_MODELS).includes('fmnist-ldm'));
  });
});

describe('first_stage_config ckpt_path', () => {
  it('relative: the working directory (or baseDir) first, then the package root; absolute paths as given', () => {
    const cwd = process.cwd();
    try {
      process.chdir(tmp);
      // Only in the package: found there from another directory.
      assert.equal(resolveFirstStagePath('models/fmnist-kl-f4.safetensors'), path.join(root, 'models', 'fmnist-kl-f4.safetensors'));
      // In both: the working directory wins (upstream's rule).
      fs.mkdirSync(path.join(tmp, 'models'), { recursive: true });
      fs.writeFileSync(path.join(tmp, 'models', 'fmnist-kl-f4.safetensors'), '');
      assert.equal(resolveFirstStagePath('models/fmnist-kl-f4.safetensors'), path.join(fs.realpathSync(tmp), 'models', 'fmnist-kl-f4.safetensors'));
      // Nowhere: the working-directory path (the loader's error names it).
      assert.equal(resolveFirstStagePath('models/none.safetensors'), path.join(fs.realpathSync(tmp), 'models', 'none.safetensors'));
      // baseDir instead of the working directory, with the same fallback.
      assert.equal(resolveFirstStagePath('configs/fmnist-ldm.yaml', '/nowhere'), path.join(root, 'configs', 'fmnist-ldm.yaml'));
      assert.equal(resolveFirstStagePath('models/fmnist-kl-f4.safetensors', tmp), path.join(tmp, 'models', 'fmnist-kl-f4.safetensors'));
      assert.equal(resolveFirstStagePath('none.safetensors', '/nowhere'), '/nowhere/none.safetensors');
      assert.equal(resolveFirstStagePath('/abs/x.safetensors'), '/abs/x.safetensors');
    } finally {
      process.chdir(cwd);
    }
  });
});
