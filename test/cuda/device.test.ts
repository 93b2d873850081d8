// --device cpu|cuda|auto: the choice (src/tensor/device.ts), the probe in a
// child process and its cache, the error for an unavailable 'cuda', and the
// CLI flag. On a machine without a GPU 'auto' falls back to the CPU with the
// reason; on one with a GPU it picks cuda.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { DEFAULT_MODEL, loadPipeline } from '../../src/pipeline';
import { DeviceUnavailableError, parseDeviceSpec, probeCuda, resolveDevice } from '../../src/tensor/device';
import { native, packageRoot } from '../../src/tensor/native';
import { fromArray } from '../../src/tensor/tensor';
import { Linear } from '../../src/nn/layers';

const deviceJs = path.join(packageRoot, 'dist', 'src', 'tensor', 'device.js');
const cli = path.join(packageRoot, 'bin', 'tdq-native.js');

/** Runs `code` (with `d` = device.js) in a fresh process; its stdout parsed as JSON. */
function inChild(code: string, env: Record<string, string>): { out: unknown; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['-e', `const d=require(${JSON.stringify(deviceJs)});${code}`], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return { out: JSON.parse(r.stdout), ms: Date.now() - t0 };
}

function tmpCache(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-probe-'));
}

describe('device selection', () => {
  const probe = probeCuda();

  it('parses the three names and refuses others', () => {
    for (const s of ['cpu', 'cuda', 'auto'] as const) assert.equal(parseDeviceSpec(s), s);
    assert.throws(() => parseDeviceSpec('gpu'), (e: Error) => e instanceof TypeError && /device 'gpu': expected one of auto, cuda, cpu/.test(e.message));
    assert.throws(() => resolveDevice('gpu' as 'cpu'), TypeError);
  });

  it("'cpu' is taken as is: no probe runs", () => {
    // A probe would time out at 1 ms and say so; 'cpu' must not ask.
    const { out } = inChild("const lines=[];const dev=d.resolveDevice('cpu',(l)=>lines.push(l));process.stdout.write(JSON.stringify({dev,lines}))", { TDQ_CUDA_PROBE_TIMEOUT_MS: '1', TDQ_CUDA_PROBE_CACHE: '0' });
    assert.deepEqual(out, { dev: 'cpu', lines: [] });
  });

  it("'auto' falls back to the CPU with the reason (or picks cuda where a GPU works)", () => {
    const { out } = inChild("const lines=[];const dev=d.resolveDevice('auto',(l)=>lines.push(l));process.stdout.write(JSON.stringify({dev,lines,p:d.probeCuda()}))", { TMPDIR: tmpCache() });
    const o = out as { dev: string; lines: string[]; p: { available: boolean; reason: string } };
    assert.equal(o.p.available, probe.available);
    if (probe.available) {
      assert.equal(o.dev, 'cuda');
      assert.match(o.lines[0], /^device: cuda \(auto: probe passed/);
    } else {
      assert.equal(o.dev, 'cpu');
      assert.equal(o.lines.length, 1);
      assert.equal(o.lines[0], `device: cpu (auto: cuda unavailable: ${o.p.reason})`);
      // The child saw what the addon sees in this process.
      assert.equal(o.p.reason, native().info().cuda.reason);
    }
  });

  it("'cuda' without a usable GPU is a DeviceUnavailableError (a TypeError) saying what was tried and how to fix it", { skip: probe.available ? 'a GPU works here' : false }, () => {
    assert.throws(() => resolveDevice('cuda'), (e: Error) => {
      assert.ok(e instanceof DeviceUnavailableError && e instanceof TypeError, `${e.name}: ${e.message}`);
      assert.equal(e.name, 'DeviceUnavailableError');
      assert.ok(e.message.startsWith(`device 'cuda' is not available: ${probe.reason}`), e.message);
      assert.match(e.message, /tried: a child process \(timeout \d+ ms\) tried to load .*libtdq_cuda\.so and the NVIDIA driver \(libcuda\.so\.1\), create a context and run one kernel/);
      assert.match(e.message, /fix: .+; or use --device cpu/);
      return true;
    });
  });

  it('names the fix for each reason: disabled, no library, hung probe', () => {
    const ask = "try{d.resolveDevice('cuda');process.stdout.write(JSON.stringify({ok:true}))}catch(e){process.stdout.write(JSON.stringify({name:e.name,reason:e.reason,fix:e.fix,cached:d.probeCuda().cached}))}";
    const off = inChild(ask, { TDQ_CUDA_DISABLE: '1', TDQ_CUDA_PROBE_CACHE: '0' }).out as Record<string, string>;
    assert.deepEqual([off.name, off.reason, off.fix], ['DeviceUnavailableError', 'disabled by TDQ_CUDA_DISABLE=1', 'unset TDQ_CUDA_DISABLE']);
    const noLib = inChild(ask, { TDQ_CUDA_LIB: path.join(packageRoot, 'no-such-dir', 'libtdq_cuda.so'), TDQ_CUDA_PROBE_CACHE: '0' }).out as Record<string, string>;
    assert.match(noLib.reason, /no CUDA backend/);
    assert.match(noLib.fix, /install the CUDA toolkit \(nvcc\) and run 'npm run build:native'/);
    // A probe that does not answer in time: killed, the process goes on, the verdict is not cached.
    const hungDir = tmpCache();
    const hung = inChild(ask, { TDQ_CUDA_PROBE_TIMEOUT_MS: '1', TDQ_CUDA_PROBE_CACHE: '1', TMPDIR: hungDir }).out as Record<string, string>;
    assert.equal(hung.reason, 'the probe did not finish in 1 ms (a hung driver or device?)');
    assert.match(hung.fix, /nvidia-smi/);
    assert.deepEqual(fs.readdirSync(hungDir), []); // nothing written for a timeout
  });

  it('keeps the verdict: in the process, and in a cache file for the next process', () => {
    assert.equal(probeCuda().cached, true); // the describe's probe came first
    const dir = tmpCache();
    const code = "const p=d.probeCuda();process.stdout.write(JSON.stringify(p))";
    const first = inChild(code, { TMPDIR: dir, TDQ_CUDA_PROBE_CACHE: '1' }).out as { cached: boolean; reason: string };
    const second = inChild(code, { TMPDIR: dir, TDQ_CUDA_PROBE_CACHE: '1' }).out as { cached: boolean; reason: string };
    assert.equal(first.cached, false);
    assert.equal(second.cached, true);
    assert.equal(second.reason, first.reason);
    // Another environment (a disabled backend) is another key: probed afresh.
    const other = inChild(code, { TMPDIR: dir, TDQ_CUDA_PROBE_CACHE: '1', TDQ_CUDA_DISABLE: '1' }).out as { cached: boolean; reason: string };
    assert.deepEqual([other.cached, other.reason], [false, 'disabled by TDQ_CUDA_DISABLE=1']);
  });

  it("tensors and modules move with .to(); on 'cpu' nothing changes", () => {
    const t = fromArray([1, 2, 3], [3]);
    assert.equal(t.to('cpu'), t);
    const l = new Linear(3, 2);
    const w = l.weight;
    assert.equal(l.to('cpu'), l);
    assert.equal(l.weight, w);
    assert.equal(l.device(), 'cpu');
    t.dispose();
    l.dispose();
  });

  it("loadPipeline with device 'cpu' (and 'auto' here without a GPU) samples exactly what it did without the option", { skip: probe.available ? "'auto' picks cuda here" : false }, async () => {
    const run = async (device?: 'cpu' | 'auto') => {
      const p = await loadPipeline(DEFAULT_MODEL, device ? { device } : {});
      try {
        return { device: p.device, note: p.deviceNote, data: (await p.generate({ n: 1, steps: 2, seed: 3 })).data };
      } finally {
        p.dispose();
      }
    };
    const plain = await run(), cpu = await run('cpu'), auto = await run('auto');
    assert.equal(cpu.device, 'cpu');
    assert.equal(auto.device, 'cpu');
    assert.equal(auto.note, `device: cpu (auto: cuda unavailable: ${probe.reason})`);
    assert.deepEqual(cpu.data, plain.data);
    assert.deepEqual(auto.data, plain.data);
  });
});

describe('--device on the command line', () => {
  const probe = probeCuda();
  const tdq = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env } });

  it("train, sample, calibrate and eval take --device (cpu, cuda, auto) and refuse other names", () => {
    for (const c of ['train', 'sample', 'calibrate', 'eval']) {
      const h = tdq([c, '--help']);
      assert.match(h.stdout, /--device[\s\S]*choices: "auto", "cuda", "cpu"/, `${c} --help`);
    }
    const bad = tdq(['sample', '--device', 'gpu']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /Invalid values:[\s\S]*device, Given: "gpu"/);
  });

  it('sample --device cuda without a GPU fails with the reason and the fix; --device auto --verbose says it fell back', { skip: probe.available ? 'a GPU works here' : false }, () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-dev-'));
    const cuda = tdq(['sample', '--device', 'cuda', '-n', '1', '--steps', '2', '--outdir', out, '--no-progress']);
    assert.equal(cuda.status, 1, cuda.stderr);
    assert.ok(cuda.stderr.includes(`tdq-native: device 'cuda' is not available: ${probe.reason}`), cuda.stderr);
    assert.match(cuda.stderr, /fix: /);
    assert.deepEqual(fs.readdirSync(out), []); // failed before writing anything
    const auto = tdq(['sample', '--device', 'auto', '--verbose', '-n', '1', '--steps', '2', '--outdir', out, '--no-progress', '--no-grid']);
    assert.equal(auto.status, 0, auto.stderr);
    assert.ok(auto.stderr.includes(`tdq-native: device: cpu (auto: cuda unavailable: ${probe.reason})`), auto.stderr);
    const quiet = tdq(['sample', '--device', 'auto', '-n', '1', '--steps', '2', '--outdir', fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-dev-')), '--no-progress', '--no-grid']);
    assert.equal(quiet.status, 0, quiet.stderr);
    assert.doesNotMatch(quiet.stderr, /device:/); // quiet without --verbose
  });

  it("info shows what 'auto' picks and why", () => {
    const r = tdq(['info']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, probe.available ? /^device auto: cuda/m : new RegExp(`^device auto: cpu \\(${probe.reason.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)`, 'm'));
    const j = JSON.parse(tdq(['info', '--json']).stdout) as { autoDevice: { device: string; reason: string } };
    assert.deepEqual([j.autoDevice.device, j.autoDevice.reason], [probe.available ? 'cuda' : 'cpu', probe.reason]);
  });
});
