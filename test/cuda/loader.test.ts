// The CUDA backend's loader (native/cuda/cuda_loader.cpp): libtdq_cuda.so is
// dlopened on first use, and on a machine without it, without a driver or
// without a device, `info` says why and asking for 'cuda' is a TypeError
// carrying that reason, never a crash. (The kernels themselves are checked
// against the CPU ops by test/cuda/cuda_vs_cpu.cpp on a GPU machine:
// scripts/gpu-check.sh.)
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import { native, packageRoot } from '../../src/tensor/native';
import { full } from '../../src/tensor/ops/creation';
import { fromArray } from '../../src/tensor/tensor';

// info().cuda in a fresh process with `env` added.
function cudaInfoWith(env: Record<string, string>): { built: boolean; available: boolean; reason: string } {
  const code = `const {native}=require(${JSON.stringify(path.join(packageRoot, 'dist', 'src', 'tensor', 'native.js'))});` +
    'process.stdout.write(JSON.stringify(native().info().cuda));';
  const r = spawnSync(process.execPath, ['-e', code], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

describe('cuda loader', () => {
  const info = native().info().cuda;

  it('info reports whether libtdq_cuda.so was built, and why CUDA is unavailable', () => {
    assert.equal(typeof info.built, 'boolean');
    assert.equal(typeof info.buildInfo, 'string');
    if (info.built) assert.match(info.buildInfo ?? '', /^CUDA \d+\.\d+ \(static runtime\), architectures /);
    if (!info.available) assert.ok(info.reason.length > 10, `reason: '${info.reason}'`);
    else assert.equal(info.reason, '');
  });

  it('a library that cannot be loaded is a reason, not a crash', () => {
    const missing = cudaInfoWith({ TDQ_CUDA_LIB: path.join(packageRoot, 'no-such-dir', 'libtdq_cuda.so') });
    assert.equal(missing.built, false);
    assert.equal(missing.available, false);
    assert.match(missing.reason, /no CUDA backend .*no-such-dir\/libtdq_cuda\.so could not be loaded/);
    const notElf = cudaInfoWith({ TDQ_CUDA_LIB: path.join(packageRoot, 'package.json') });
    assert.equal(notElf.available, false);
    assert.match(notElf.reason, /package\.json could not be loaded/);
  });

  it('TDQ_CUDA_DISABLE=1 turns the backend off', () => {
    const off = cudaInfoWith({ TDQ_CUDA_DISABLE: '1' });
    assert.deepEqual([off.available, off.reason], [false, 'disabled by TDQ_CUDA_DISABLE=1']);
  });

  it('where the library is built here, it is found next to the addon', () => {
    const lib = path.join(packageRoot, 'build', 'Release', 'libtdq_cuda.so');
    const addon = path.join(packageRoot, 'build', 'Release', 'tdq_native.node');
    if (!fs.existsSync(addon) || process.env.TDQ_ADDON_PATH) return; // another addon layout: nothing to compare
    assert.equal(info.built, fs.existsSync(lib));
  });

  it("without a usable device, tensors and ops on 'cuda' are TypeErrors naming the reason", { skip: info.available }, () => {
    assert.throws(() => fromArray([1, 2, 3], [3], 'float32', 'cuda'), (e: Error) => {
      assert.ok(e instanceof TypeError, `${e.name}: ${e.message}`);
      assert.ok(e.message.includes(info.reason), e.message);
      assert.match(e.message, /use device 'cpu'/);
      return true;
    });
    // An op that creates a tensor on 'cuda' from nothing: the same reason (not "no kernel").
    assert.throws(() => full([2], 1, 'float32', 'cuda'), (e: Error) => e instanceof TypeError && e.message.includes(info.reason));
  });
});
