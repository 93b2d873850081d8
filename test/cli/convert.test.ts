// `tdq-native convert`: torch checkpoints (torch 1.13 fixtures) to safetensors,
// through the real binary: values, --half, --ema, the report, and failures.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { convertCheckpoint } from '../../src/cli/commands/convert';
import { readSafetensors } from '../../src/io/safetensors';
import { loadTorchCheckpoint } from '../../src/io/torch_ckpt';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const FIX = path.join(root, 'test', 'fixtures', 'torch');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-convert-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function same(out: string, src: string) {
  const st = await readSafetensors(out);
  const ck = await loadTorchCheckpoint(path.join(FIX, src));
  return { st, ck };
}

describe('tdq-native convert', () => {
  it('converts a plain state dict: same names, shapes, dtypes and values; the report says what was written', async () => {
    const out = path.join(tmp, 'dtypes.safetensors');
    const r = run(['convert', path.join(FIX, 'dtypes.pt'), out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /dtypes\.pt \(zip format\) -> .*dtypes\.safetensors/);
    assert.match(r.stdout, /tensors: 7 \(/);
    assert.match(r.stdout, /dropped non-tensor entries of the state dict: 0/);
    const { st, ck } = await same(out, 'dtypes.pt');
    assert.deepEqual([...st.tensors.keys()], [...ck.tensors.keys()]);
    let bytes = 0;
    for (const [k, t] of ck.tensors) {
      const s = st.tensors.get(k)!;
      assert.equal(s.dtype, t.dtype, k);
      assert.deepEqual(s.shape, t.shape, k);
      assert.deepEqual(Array.from(s.dataSync()), Array.from(t.dataSync()), k);
      bytes += s.dataSync().byteLength;
    }
    assert.match(r.stdout, new RegExp(`, ${bytes} bytes of data`));
    assert.equal(st.metadata.source, 'dtypes.pt');
    ck.dispose();
    for (const t of st.tensors.values()) t.dispose();
  });

  it('--ema --half on the Lightning checkpoint: EMA weights as float16, model_ema.* gone, the rest reported', async () => {
    const out = path.join(tmp, 'ldm.safetensors');
    const r = run(['convert', path.join(FIX, 'lightning.ckpt'), out, '--ema', '--half']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /state dict under 'state_dict'/);
    assert.match(r.stdout, /tensors: 9 \(9 float16\)/);
    assert.match(r.stdout, /EMA: 3 parameters replaced .*; 1 model\.\* keys without one/);
    assert.match(r.stdout, /other top-level entries, not converted: "epoch", "global_step", "pytorch-lightning_version", "optimizer_states", "lr_schedulers", "callbacks", "hyper_parameters"/);
    assert.match(r.stdout, /not converted: 3 tensors outside the state dict/);
    const st = await readSafetensors(out);
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'));
    try {
      assert.ok(![...st.tensors.keys()].some((k) => k.startsWith('model_ema.')));
      const w = st.tensors.get('model.diffusion_model.out.2.weight')!;
      assert.equal(w.dtype, 'float16');
      const ema = ck.tensors.get('model_ema.diffusion_modelout2weight')!.dataSync();
      const half = Array.from(w.dataSync() as Uint16Array);
      // float16 of the EMA value: within half precision at ~100
      half.forEach((h, i) => {
        const v = (h & 0x8000 ? -1 : 1) * (1 + (h & 0x3ff) / 1024) * 2 ** (((h >> 10) & 0x1f) - 15);
        assert.ok(Math.abs(v - ema[i]) <= 0.0625, `[${i}] ${v} vs ${ema[i]}`);
      });
      assert.equal(st.metadata.ema, 'true');
      assert.equal(st.metadata.half, 'true');
    } finally {
      ck.dispose();
      for (const t of st.tensors.values()) t.dispose();
    }
  });

  it('the hostile checkpoint: converts the tensor, runs nothing, reports the refused call and the dropped entry', () => {
    const pwned = '/tmp/tdq-pwned-torch-ckpt-fixture';
    fs.rmSync(pwned, { force: true });
    const out = path.join(tmp, 'hostile.safetensors');
    const r = run(['convert', path.join(FIX, 'hostile_legacy.pt'), out]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.existsSync(pwned), false);
    assert.match(r.stdout, /tensors: 1 \(1 float32\), 12 bytes/);
    assert.match(r.stdout, /dropped non-tensor entries of the state dict: 1\n {4}evil: <posix\.system object>/);
    assert.match(r.stdout, /note: refused to call posix\.system\("touch \/tmp\/tdq-pwned-torch-ckpt-fixture"\)/);
    const s = run(['convert', path.join(FIX, 'hostile.pt'), out, '--strict']);
    assert.equal(s.code, 1);
    assert.match(s.stderr, /hostile\.pt.*refusing to call posix\.system/);
  });

  it('--ignore-keys and --state-dict', async () => {
    const out = path.join(tmp, 'ign.safetensors');
    const r = await convertCheckpoint(path.join(FIX, 'lightning.ckpt'), out, { ignoreKeys: ['first_stage_model.', 'cond_stage_model.', 'model_ema.'] });
    assert.equal(r.tensors, 7);
    assert.equal(r.ignored.length, 7);
    const st = await readSafetensors(out);
    assert.ok(![...st.tensors.keys()].some((k) => /^(first_stage|cond_stage|model_ema)/.test(k)));
    for (const t of st.tensors.values()) t.dispose();
    const rr = run(['convert', path.join(FIX, 'lightning.ckpt'), out, '--state-dict', 'nope']);
    assert.equal(rr.code, 1);
    assert.match(rr.stderr, /lightning\.ckpt: the checkpoint has no top-level key 'nope'/);
  });

  it('failures: a non-checkpoint, --ema without EMA, a wrong output name, a missing argument', () => {
    const bad = path.join(tmp, 'bad.pt');
    fs.writeFileSync(bad, 'not a checkpoint');
    const out = path.join(tmp, 'x.safetensors');
    let r = run(['convert', bad, out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tdq-native: torch checkpoint: .*bad\.pt: not a PyTorch checkpoint/);
    assert.equal(fs.existsSync(out), false);
    r = run(['convert', path.join(FIX, 'fp32.pt'), out, '--ema']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /fp32\.pt: no model_ema\.\* weights/);
    r = run(['convert', path.join(FIX, 'fp32.pt'), path.join(tmp, 'x.bin')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the output must be a \.safetensors file/);
    r = run(['convert', path.join(FIX, 'fp32.pt')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Not enough non-option arguments/);
  });

  it('is listed in --help', () => {
    const r = run(['--help']);
    assert.match(r.stdout, /tdq-native convert <in> <out>/);
  });
});
