// The loading seam (src/models/load.ts): one path from a checkpoint file to a
// ready model, full precision or quantized, with its numbers checked.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { sampleCommand } from '../../src/cli/commands/sample';
import { inspectCommand } from '../../src/cli/commands/inspect';
import { main } from '../../src/cli/index';
import { type Config, loadConfig } from '../../src/config';
import { TorchCheckpointError } from '../../src/io/torch_ckpt';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { CheckpointValueError } from '../../src/models/checks';
import { type Denoiser, buildUNet } from '../../src/models/diffusion';
import { LoadedModel, ModelLoadError, loadModel } from '../../src/models/load';
import { loadPipeline } from '../../src/pipeline';
import { resolveQuantConfig } from '../../src/quant/config';
import { QuantizedModel, quantizeModel } from '../../src/quant/quantize_model';
import { noGrad } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { fromArray } from '../../src/tensor/tensor';
import { saveCheckpoint } from '../../src/train/checkpoint';

let dir: string, fp: string, q: string, qt: string, config: Config;

/** A copy of `src` with element 0 of tensor `key` (a regexp on the key) set to `value`; returns the key changed. */
async function damaged(src: string, dst: string, key: RegExp, value: number): Promise<string> {
  const { tensors, metadata } = await readSafetensors(src);
  const k = [...tensors.keys()].find((n) => key.test(n));
  assert.ok(k, `no key matches ${key}`);
  const t = tensors.get(k)!;
  const v = Float32Array.from(t.dataSync() as Float32Array);
  v[0] = value;
  tensors.set(k, fromArray(v, t.shape));
  t.dispose();
  await writeSafetensors(dst, tensors, metadata);
  for (const x of tensors.values()) x.dispose();
  return k;
}

async function cli(args: string[]): Promise<{ code: number; err: string; out: string }> {
  let err = '', out = '';
  const log = console.log, warn = console.warn;
  console.log = (s: unknown) => void (out += `${String(s)}\n`);
  console.warn = (s: unknown) => void (err += `${String(s)}\n`);
  try {
    const code = await main(args, { commands: [inspectCommand, sampleCommand], err: (s) => (err += s) });
    return { code, err, out };
  } finally {
    console.log = log;
    console.warn = warn;
  }
}

function run(m: Denoiser): Float32Array {
  const y = noGrad(() => m.forward(fromArray(new Float32Array(2 * 32 * 32).fill(0.1), [2, 1, 32, 32]), fromArray([5, 500], [2])));
  const v = Float32Array.from(y.dataSync() as Float32Array);
  y.dispose();
  return v;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-load-'));
  fp = path.join(dir, 'fp.safetensors');
  q = path.join(dir, 'q.safetensors');
  qt = path.join(dir, 'qt.safetensors');
  ({ config } = loadConfig(path.join(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), {
    overrides: ['model.params.unet_config.params.channel_mult=[1,1]', 'model.params.unet_config.params.num_res_blocks=1', 'model.params.unet_config.params.attention_resolutions=[2]'],
  }));
  const unet = buildUNet(config.model.params.unet_config, new Generator(3));
  await saveCheckpoint(fp, { config, model: unet });
  // Static LSQ steps (q) and TDQ with its step table (qt).
  const qm = quantizeModel(unet, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic: false }), { timesteps: config.model.params.timesteps, gen: new Generator(0) });
  await saveCheckpoint(q, { config, model: qm, extraMetadata: qm.checkpointMetadata() });
  qm.dispose();
  const unet2 = buildUNet(config.model.params.unet_config, new Generator(3));
  const tm = quantizeModel(unet2, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic: true }), { timesteps: config.model.params.timesteps, gen: new Generator(0) });
  tm.buildTable();
  await saveCheckpoint(qt, { config, model: tm, extraMetadata: tm.checkpointMetadata() });
  tm.dispose();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('loadModel', () => {
  it('loads a full-precision checkpoint into a ready model that owns its weights', async () => {
    const m = await loadModel(fp);
    assert.ok(m instanceof LoadedModel);
    assert.equal(m.quantized, null);
    assert.equal(m.config.model.params.image_size, config.model.params.image_size);
    assert.deepEqual(m.report, { ema: false, missingKeys: [], unexpectedKeys: [], problems: [] });
    assert.equal(m.model.training, false);
    assert.ok(run(m.model).every(Number.isFinite));
    m.dispose();
    assert.ok(m.model.parameters()[0].disposed);
  });

  it('loads a quantized checkpoint as the same Denoiser type (no cast), and expect float refuses it', async () => {
    const m = await loadModel(q);
    assert.ok(m.quantized instanceof QuantizedModel);
    assert.equal(m.model, m.quantized);
    const d: Denoiser = m.model;
    assert.ok(run(d).every(Number.isFinite));
    m.dispose();
    const t = await loadModel(qt);
    assert.ok(t.quantized!.hasTable);
    assert.ok(run(t.model).every(Number.isFinite));
    t.dispose();
    await assert.rejects(loadModel(q, { expect: 'float' }), (e: unknown) => e instanceof ModelLoadError && /q\.safetensors is already quantized \(W8A8/.test(e.message));
  });

  it('names what is wrong: missing file, no config, weights that do not fit, a broken PyTorch file', async () => {
    await assert.rejects(loadModel(path.join(dir, 'nope.safetensors')), (e: unknown) => e instanceof ModelLoadError && /checkpoint not found: .*nope\.safetensors/.test(e.message));
    const plain = path.join(dir, 'plain.safetensors');
    const { tensors } = await readSafetensors(fp);
    const sd = new Map([...tensors].filter(([k]) => k.startsWith('model.')).map(([k, t]) => [k.slice(6), t]));
    sd.delete([...sd.keys()][0]);
    await writeSafetensors(plain, sd, {});
    for (const t of tensors.values()) t.dispose();
    await assert.rejects(loadModel(plain), /plain\.safetensors carries no config in its metadata: pass the model's YAML config with --config/);
    await assert.rejects(loadModel(plain, { config }), (e: unknown) => e instanceof ModelLoadError && /the weights do not fit the model of its config: .*missing keys: "/s.test(e.message));
    const ckpt = path.join(dir, 'model.ckpt');
    fs.writeFileSync(ckpt, 'not a pickle');
    // A .ckpt goes to the torch checkpoint reader (by extension), whose errors name the file.
    await assert.rejects(loadModel(ckpt), (e: unknown) => e instanceof TorchCheckpointError && /model\.ckpt/.test(e.message));
  });
});

describe('numbers checked at load', () => {
  it('a NaN or Inf weight is refused with the tensor name (loadPipeline sampled black images before)', async () => {
    const bad = path.join(dir, 'nan.safetensors');
    const key = await damaged(fp, bad, /^model\.out\.2\.weight$/, NaN);
    await assert.rejects(loadPipeline(bad), (e: unknown) =>
      e instanceof CheckpointValueError && e.problems[0].key === key && e.problems[0].kind === 'non-finite' && e.message.includes(`tensor '${key}' is not finite: element 0 is NaN`));
    const inf = path.join(dir, 'inf.safetensors');
    const k2 = await damaged(fp, inf, /^model\.input_blocks\.0\.0\.bias$/, -Infinity);
    await assert.rejects(loadModel(inf), new RegExp(`tensor '${k2.replace(/\./g, '\\.')}' is not finite: element 0 is -Infinity`));
    // allowNonFinite loads it for inspection and reports what it let through.
    const m = await loadModel(bad, { allowNonFinite: true });
    assert.deepEqual(m.report.problems.map((p) => [p.key, p.count]), [[key, 1]]);
    m.dispose();
    const pipe = await loadPipeline(bad, { allowNonFinite: true });
    assert.equal(pipe.loaded!.report.problems.length, 1);
    pipe.dispose();
  });

  for (const [what, re, value, file] of [
    ['NaN activation step', /act_quant\.step$/, NaN, 'q'],
    ['infinite weight step', /weight_quant\.step$/, Infinity, 'q'],
    ['zero TDQ step table entry', /act_quant\.step_table$/, 0, 'qt'],
  ] as const)
    it(`a quantized checkpoint with a ${what} is refused, naming the quantizer`, async () => {
      const bad = path.join(dir, `q-${what.replace(/ /g, '-')}.safetensors`);
      const key = await damaged(file === 'qt' ? qt : q, bad, re, value);
      const table = file === 'qt';
      const text = table ? `quantizer step '${key}' is not positive and finite: element 0 is 0` : `tensor '${key}' is not finite: element 0 is ${value}`;
      await assert.rejects(loadModel(bad), (e: unknown) =>
        e instanceof CheckpointValueError && e.problems[0].key === key && e.problems[0].kind === (table ? 'step' : 'non-finite') && e.message.includes(text));
      // The step table itself refuses bad entries even when the load lets them through.
      if (table) return void (await assert.rejects(loadModel(bad, { allowNonFinite: true }), /StepTable: entry 0 is 0/));
      const m = await loadModel(bad, { allowNonFinite: true });
      assert.equal(m.report.problems[0].key, key);
      m.dispose();
    });

  it('a learned step <= 0 (QAT can leave one there; forward floors it) loads, reported as floored', async () => {
    for (const [re, value] of [[/act_quant\.step$/, 0], [/weight_quant\.step$/, -0.5]] as const) {
      const bad = path.join(dir, `q-floored-${value}.safetensors`);
      const key = await damaged(q, bad, re, value);
      const m = await loadModel(bad);
      assert.deepEqual(m.report.problems.map((p) => [p.key, p.kind, p.value]), [[key, 'floored', value]]);
      assert.ok(run(m.model).every(Number.isFinite));
      m.dispose();
    }
  });

  it('inspect refuses bad steps, and with --allow-non-finite marks them in its table', async () => {
    const bad = path.join(dir, 'q-inspect.safetensors');
    const key = await damaged(q, bad, /act_quant\.step$/, NaN);
    const r = await cli(['inspect', '--ckpt', bad, '--no-plots']);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`tensor '${key.replace(/\./g, '\\.')}' is not finite: element 0 is NaN`));
    const ok = await cli(['inspect', '--ckpt', bad, '--no-plots', '--allow-non-finite']);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /WARNING: 1 tensor holds bad numbers/);
    const name = key.replace(/^model\./, '').replace(/\.step$/, '');
    const row = ok.out.split('\n').find((l) => l.trim().startsWith(`${name} `));
    assert.ok(row && /!! bad$/.test(row), row);
    assert.equal(ok.out.split('\n').filter((l) => l.endsWith('!! bad')).length, 1);
    const floored = path.join(dir, 'q-floored-inspect.safetensors');
    const k2 = await damaged(q, floored, /act_quant\.step$/, -1);
    const f = await cli(['inspect', '--ckpt', floored, '--no-plots']);
    assert.equal(f.code, 0, f.err);
    assert.match(f.out, /note: 1 learned step tensor has entries <= 0, used as the step floor/);
    const frow = f.out.split('\n').find((l) => l.trim().startsWith(`${k2.replace(/^model\./, '').replace(/\.step$/, '')} `));
    assert.ok(frow && /floored$/.test(frow), frow);
    // sample loads it too, and says so.
    const outdir = path.join(dir, 'floored-samples');
    const sm = await cli(['sample', '--ckpt', floored, '--n-samples', '1', '--custom-steps', '2', '--outdir', outdir, '--no-progress']);
    assert.equal(sm.code, 0, sm.err);
    assert.match(sm.err, new RegExp(`note: .*${k2.replace(/\./g, '\\.')}.*is not positive \\(used as the step floor 1e-8\\)`));
  });
});
