// Peak memory of loading: a checkpoint's weights are held once, not twice.
// A medium latent diffusion model (about 125 MB of float32 weights) is
// written as .safetensors and as a torch zip .ckpt; a child process (fresh,
// so its resident-set high-water mark is its own) resets VmHWM through
// /proc/self/clear_refs, runs one loader, and reports the peak added to its
// resident set. Bounds (B = the weights' bytes):
//   loadLatentModel (model built, then the file streamed into it)  < 1.4 B
//     (measured about 1.28 B here, where ~35 MB of the process (V8 heap,
//     the read buffer, a 4 MB batch) is a large share; the former loader,
//     every tensor read before the copy into the model, peaked above 2 B)
//   readTensorFile (every tensor in the engine, the file not held) < 1.3 B
//   convert .ckpt -> .safetensors (streamed, nothing held)          < 0.3 B
// Skipped, with the reason, where /proc/self/status or clear_refs is missing.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import YAML from 'yaml';

import { inspectSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { createLatentDiffusion } from '../../src/models/latent';
import { parseLatentDiffusionConfig } from '../../src/models/latent_config';
import { Generator } from '../../src/tensor/random';
import { P, pkl, storedZip, tensorPickle } from '../helpers/torch_ckpt';

const root = path.resolve(__dirname, '..', '..', '..');
const SRC = path.join(root, 'dist', 'src');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-load-memory-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function procSkip(): string | false {
  try {
    fs.readFileSync('/proc/self/status', 'utf8');
  } catch {
    return 'no /proc/self/status on this system';
  }
  const r = spawnSync(process.execPath, ['-e', "require('fs').writeFileSync('/proc/self/clear_refs', '5')"], { encoding: 'utf8' });
  return r.status === 0 ? false : `cannot reset the peak resident set through /proc/self/clear_refs (${r.stderr.trim().split('\n')[0]})`;
}
const skip = procSkip();

// The tiny LDM fixture's config with a wider UNet: about 32M parameters, 120-130 MB.
function mediumConfig(): Record<string, unknown> {
  const raw = YAML.parse(fs.readFileSync(path.join(root, 'test', 'fixtures', 'latent', 'tiny_ldm_uncond.yaml'), 'utf8'));
  Object.assign(raw.model.params.unet_config.params, { model_channels: 224, channel_mult: [1, 2], num_res_blocks: 1 });
  return raw;
}

const CHILD = `
const fs = require('fs');
const SRC = process.argv[1], op = process.argv[2], args = process.argv.slice(3);
const kb = (k) => Number(fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(k + ':\\\\s+(\\\\d+)'))[1]) * 1024;
(async () => {
  const { native } = require(SRC + '/tensor/native');
  const { fromArray, sync } = require(SRC + '/tensor/tensor');
  const { readTensorFile } = require(SRC + '/io/checkpoint_file');
  const { loadLatentModel } = require(SRC + '/models/load_latent');
  const { convertCheckpoint } = require(SRC + '/cli/commands/convert');
  fromArray([1], [1]).dispose(); // the addon loaded, the engine started
  fs.writeFileSync('/proc/self/clear_refs', '5');
  const base = kb('VmRSS');
  let held = 0;
  if (op === 'latent') {
    const m = await loadLatentModel(args[0], { config: args[1] });
    held = [...m.model.stateDict().values()].reduce((n, t) => n + t.size * 4, 0);
  } else if (op === 'read') {
    const { tensors } = await readTensorFile(args[0]);
    held = [...tensors.values()].reduce((n, t) => n + t.size * 4, 0);
  } else await convertCheckpoint(args[0], args[1]);
  await sync(); // the engine runs queued ops (inits, copies, frees) after the loader returns: the peak may come then
  console.log(JSON.stringify({ added: kb('VmHWM') - base, held, live: native().memory().liveBytes }));
})().catch((e) => { console.error(e); process.exit(1); });
`;

function child(op: string, ...args: string[]): { added: number; held: number; live: number } {
  const r = spawnSync(process.execPath, ['-e', CHILD, SRC, op, ...args], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout.trim().split('\n').pop()!);
  console.log(`# ${op} ${args.map((a) => path.basename(a)).join(' ')}: peak added ${(res.added / 2 ** 20).toFixed(1)} MiB, held ${(res.held / 2 ** 20).toFixed(1)} MiB`);
  return res;
}

describe('loading a checkpoint holds its weights once (peak resident set of a child process)', { skip }, () => {
  const cfg = path.join(tmp, 'medium.yaml'), st = path.join(tmp, 'medium.safetensors'), ck = path.join(tmp, 'medium.ckpt');
  let bytes = 0;

  before(async () => {
    const raw = mediumConfig();
    fs.writeFileSync(cfg, YAML.stringify(raw));
    const { model } = await createLatentDiffusion(parseLatentDiffusionConfig(raw, cfg), { gen: new Generator(5) });
    const sd = model.stateDict();
    await writeSafetensors(st, sd);
    // The same state dict as a torch zip checkpoint, Lightning-shaped ({'state_dict': {...}}).
    const entries: number[][] = [];
    const storages: [string, Uint8Array][] = [];
    let i = 0;
    for (const [k, t] of sd) {
      const key = String(i++);
      const data = t.dataSync() as Float32Array;
      const stride = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, b) => a * b, 1));
      entries.push([...P.str(k), ...tensorPickle('FloatStorage', key, t.size, 0, [...t.shape], stride)]);
      storages.push([`archive/data/${key}`, new Uint8Array(data.buffer, data.byteOffset, data.byteLength)]);
      bytes += data.byteLength;
    }
    const body = pkl(P.proto(2), P.emptyDict, P.str('state_dict'), P.emptyDict, P.mark, ...entries, P.setitems, P.setitem, P.stop);
    fs.writeFileSync(ck, storedZip([['archive/data.pkl', body], ...storages, ['archive/version', Buffer.from('3\n')]]));
    model.dispose();
    assert.ok(bytes > 64 * 2 ** 20, `the medium model has ${bytes} bytes of weights`);
  });

  for (const ext of ['safetensors', 'ckpt']) {
    it(`loadLatentModel from .${ext}: peak added < 1.4x the weights (the model's own copy and little more)`, () => {
      const r = child('latent', ext === 'ckpt' ? ck : st, cfg);
      assert.equal(r.held, bytes);
      assert.ok(r.added < 1.4 * bytes, `peak added ${(r.added / 2 ** 20).toFixed(1)} MiB for ${(bytes / 2 ** 20).toFixed(1)} MiB of weights`);
    });
  }

  it('readTensorFile (.safetensors and .ckpt): every tensor in the engine, peak added < 1.3x', () => {
    for (const f of [st, ck]) {
      const r = child('read', f);
      assert.equal(r.held, bytes);
      assert.ok(r.added < 1.3 * bytes, `${path.basename(f)}: peak added ${(r.added / 2 ** 20).toFixed(1)} MiB for ${(bytes / 2 ** 20).toFixed(1)} MiB`);
    }
  });

  it('convert .ckpt -> .safetensors streams: peak added < 0.3x the weights, and the output has them all', async () => {
    const out = path.join(tmp, 'converted.safetensors');
    const r = child('convert', ck, out);
    assert.ok(r.added < 0.3 * bytes, `peak added ${(r.added / 2 ** 20).toFixed(1)} MiB for ${(bytes / 2 ** 20).toFixed(1)} MiB`);
    assert.equal(r.live, 0);
    const [a, b] = [await inspectSafetensors(out), await inspectSafetensors(st)];
    assert.deepEqual([...a.tensors], [...b.tensors]);
    assert.equal(a.fileSize - a.dataStart, bytes);
  });
});
