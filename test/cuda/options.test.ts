// The CUDA library's options from JS: --precision / `precision` (fp32, fp16,
// bf16) set the library's 'precision' on cuda and are an error on the CPU
// (never silently ignored); `tdq-native info` shows what the library loaded of
// cuBLAS / cuDNN; each rank of a launched run is pinned to one GPU (local rank
// mod GPU count). The parts that need a device skip here with the reason.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { formatInfo } from '../../src/cli/commands/info';
import { cliDevice } from '../../src/cli/commands/preflight';
import { CliError } from '../../src/cli/index';
import { loadPipeline } from '../../src/pipeline';
import { applyPrecision, localDevicePin, parsePrecision } from '../../src/tensor/device';
import { native, packageRoot } from '../../src/tensor/native';
import { cudaSkip } from '../helpers/gpu';

const cli = path.join(packageRoot, 'bin', 'tdq-native.js');
const skip = cudaSkip();

describe('precision', () => {
  it('parses fp32, fp16, bf16 and nothing else', () => {
    for (const p of ['fp32', 'fp16', 'bf16']) assert.equal(parsePrecision(p), p);
    assert.throws(() => parsePrecision('fp8'), { name: 'RangeError', message: "precision 'fp8': expected one of fp32, fp16, bf16" });
  });

  it('on the CPU: fp32 is accepted, fp16 / bf16 are errors naming the fix', async () => {
    applyPrecision('cpu', 'fp32');
    applyPrecision('cpu');
    for (const p of ['fp16', 'bf16'] as const) assert.throws(() => applyPrecision('cpu', p), { name: 'RangeError', message: new RegExp(`precision '${p}' needs device 'cuda'.*--device cuda`) });
    assert.throws(() => cliDevice({ device: 'cpu', precision: 'fp16', verbose: false }), (e: unknown) => e instanceof CliError && /^--precision fp16: precision 'fp16' needs device 'cuda'/.test(e.message));
    assert.equal(cliDevice({ device: 'cpu', precision: 'fp32', verbose: false }), 'cpu');
    await assert.rejects(loadPipeline(undefined, { device: 'cpu', precision: 'bf16' }), /precision 'bf16' needs device 'cuda'/);
  });

  it('train, sample, calibrate and eval take --precision; sample --precision fp16 on the CPU fails before writing', () => {
    for (const c of ['train', 'sample', 'calibrate', 'eval']) {
      const h = spawnSync(process.execPath, [cli, c, '--help'], { encoding: 'utf8' });
      assert.match(h.stdout, /--precision[\s\S]*choices: "fp32", "fp16", "bf16"/, `${c} --help`);
    }
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-prec-'));
    const r = spawnSync(process.execPath, [cli, 'sample', '--device', 'cpu', '--precision', 'fp16', '-n', '1', '--steps', '2', '--outdir', out, '--no-progress'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /--precision fp16: precision 'fp16' needs device 'cuda'/);
    assert.deepEqual(fs.readdirSync(out), []);
  });

  it('on cuda: sets the library option, and info shows it with the libraries line (GPU only)', { skip }, () => {
    try {
      for (const p of ['bf16', 'fp16', 'fp32'] as const) {
        applyPrecision('cuda', p);
        assert.equal(native().cudaGetOption('precision'), p);
        assert.equal(native().info().cuda.options?.precision, p);
      }
      const info = native().info();
      assert.equal(typeof info.cuda.libraries, 'string');
      assert.match(formatInfo(info, 'test'), /\ncuda libraries: .*(cuBLAS|cublas)/i);
      assert.throws(() => native().cudaSetOption('precision', 'fp8'), RangeError);
    } finally {
      applyPrecision('cuda', 'fp32');
    }
  });
});

describe('tdq-native info', () => {
  it('shows the libraries and options lines when the CUDA library reports them, nothing of them otherwise', () => {
    const info = native().info();
    const plain = formatInfo({ ...info, cuda: { built: true, available: false, reason: 'no NVIDIA driver' } }, 'test');
    assert.doesNotMatch(plain, /cuda libraries:|cuda options:/);
    const text = formatInfo({ ...info, cuda: { built: true, available: true, reason: '', libraries: 'cuBLAS 13.0 (libcublas.so.13); cuDNN absent', options: { kernels: 'auto', precision: 'bf16', int8: 'wmma' } } }, 'test');
    assert.match(text, /\ncuda libraries: cuBLAS 13\.0 \(libcublas\.so\.13\); cuDNN absent\n/);
    assert.match(text, /\ncuda options: kernels=auto precision=bf16 int8=wmma\n/);
  });
});

describe('one GPU per rank', () => {
  it('local rank mod the GPU count, within CUDA_VISIBLE_DEVICES when the launcher set it', () => {
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '0' }, 4), '0');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '5' }, 4), '1');
    assert.equal(localDevicePin({ MPI_LOCALRANKID: '2' }, 2), '0');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '1', CUDA_VISIBLE_DEVICES: '4,6,7' }, 8), '6');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '3', CUDA_VISIBLE_DEVICES: '4, 6' }, 8), '6');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '1' }, 1), undefined, 'one GPU: nothing to pin');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: '1' }, 0), undefined, 'no GPU');
    assert.equal(localDevicePin({}, 4), undefined, 'not launched by MPI');
    assert.equal(localDevicePin({ OMPI_COMM_WORLD_LOCAL_RANK: 'x' }, 4), undefined);
  });
});
