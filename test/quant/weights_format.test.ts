// Quantized checkpoints in the 'int' weights format (src/quant/weights_format.ts):
// levels instead of float32 weights, read back without float weights for
// integer execution, dequantized bit for bit like fake quantization, and
// sampling exactly as from the float-format file.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { sampleDdim } from '../../src/diffusion/samplers/ddim';
import { makeSchedule } from '../../src/diffusion/schedule';
import { readSafetensors } from '../../src/io/safetensors';
import { openCheckpoint } from '../../src/models/load';
import { StateDictError } from '../../src/nn/module';
import { calibrate } from '../../src/quant/calibrate';
import { resolveQuantConfig } from '../../src/quant/config';
import { type QuantizedModel, applyExec, loadQuantized } from '../../src/quant/quantize_model';
import { intWeightKey, saveQuantizedCheckpoint, weightsFormatOf } from '../../src/quant/weights_format';
import { noGrad } from '../../src/tensor/autograd';
import { writeSafetensors } from '../../src/io/safetensors';
import { type Tensor, fromArray } from '../../src/tensor/tensor';
import { saveCheckpoint } from '../../src/train/checkpoint';
import { SCHEDULE, tinyUNet } from './helpers';

async function load(file: string): Promise<QuantizedModel> {
  const ck = await openCheckpoint(file);
  try {
    return loadQuantized(tinyUNet(7), ck.metadata, ck.model, ck.ema);
  } finally {
    ck.dispose();
  }
}

/** The safetensors data section's size: the file less its 8-byte length and JSON header. */
function dataBytes(file: string): number {
  const b = fs.readFileSync(file);
  return b.length - 8 - Number(b.readBigUInt64LE(0));
}

async function sample(qm: QuantizedModel): Promise<Float32Array> {
  const x = await sampleDdim((x: Tensor, t: Tensor) => qm.forward(x, t), makeSchedule(SCHEDULE), { shape: [2, 1, 8, 8], steps: 4, seed: 3 });
  const v = Float32Array.from(x.dataSync() as Float32Array);
  x.dispose();
  return v;
}

function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

for (const cfg of [
  { nBitW: 8, nBitA: 8, useDynamic: true },
  { nBitW: 4, nBitA: 8, useDynamic: false },
  { nBitW: 3, nBitA: 6, useDynamic: true },
]) {
  describe(`'int' weights format, W${cfg.nBitW}A${cfg.nBitA} ${cfg.useDynamic ? 'TDQ' : 'LSQ'}`, () => {
    let dir = '';
    let qm: QuantizedModel;
    const files = { old: '', float: '', int: '' };
    before(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-wfmt-'));
      qm = await calibrate(tinyUNet(1), resolveQuantConfig(cfg), { schedule: SCHEDULE, steps: 6, nSamples: 2, seed: 1, method: 'mse', fitIters: 100 });
      if (cfg.useDynamic) qm.buildTable();
      qm.eval();
      files.old = path.join(dir, 'old.safetensors');
      files.float = path.join(dir, 'float.safetensors');
      files.int = path.join(dir, 'int.safetensors');
      // The file calibrate wrote before the format existed: no quant_weights metadata.
      await saveCheckpoint(files.old, { config: null, model: qm, extraMetadata: qm.checkpointMetadata() });
      await saveQuantizedCheckpoint(files.float, { config: null, model: qm, weightsFormat: 'float' });
      await saveQuantizedCheckpoint(files.int, { config: null, model: qm, weightsFormat: 'int' });
    });
    after(() => {
      qm?.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('stores int8 (int4 two per byte at <= 4 bits) levels instead of the float weights: the data shrinks by exactly that', async () => {
      const { tensors, metadata } = await readSafetensors(files.int);
      try {
        assert.equal(metadata?.quant_weights, 'int');
        assert.equal(weightsFormatOf(metadata ?? {}), 'int');
        let saved = 0;
        for (const [n, l] of qm.layers) {
          const n4 = cfg.nBitW <= 4, size = l.layer.weight.size;
          assert.equal(tensors.has(`model.${n}.weight`), false, n);
          const t = tensors.get(`model.${intWeightKey(n, cfg.nBitW)}`);
          assert.ok(t, `${n}: no integer weights`);
          assert.equal(t.dtype, n4 ? 'uint8' : 'int8');
          assert.deepEqual(t.shape, n4 ? [Math.ceil(size / 2)] : l.layer.weight.shape);
          saved += 4 * size - t.size;
        }
        // Every other tensor is stored as before.
        for (const n of qm.fpLayers) assert.equal(tensors.get(`model.${n}.weight`)?.dtype, 'float32', n);
        assert.equal(dataBytes(files.int), dataBytes(files.float) - saved);
        assert.equal(dataBytes(files.old), dataBytes(files.float));
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    });

    it('loads without float weights; int and fake sampling equal the float-format (and old) file bit for bit; dequantized weights equal fake quantization bit for bit (up to the sign of zero)', async () => {
      const fromOld = await load(files.old), fromFloat = await load(files.float), fromInt = await load(files.int);
      try {
        const wb = fromInt.weightBytes();
        assert.equal(wb.quantFloat, 0, 'no float32 weights are resident for the quantized layers');
        assert.ok(wb.quantInt > 0);
        assert.ok(fromFloat.weightBytes().quantFloat > 0);
        for (const m of [fromOld, fromFloat, fromInt]) assert.equal(applyExec(m, 'int').exec, 'int');
        const [o, f, i] = [await sample(fromOld), await sample(fromFloat), await sample(fromInt)];
        assert.deepEqual(bits(f), bits(o));
        assert.deepEqual(bits(i), bits(f), 'int exec: int-format output differs from the float-format one');
        assert.equal(fromInt.weightBytes().quantFloat, 0, 'integer sampling brought back float weights');
        assert.ok(fromInt.weightBytes().quantPacked > 0);

        for (const m of [fromFloat, fromInt]) applyExec(m, 'fake');
        const [ff, fi] = [await sample(fromFloat), await sample(fromInt)];
        assert.deepEqual(bits(fi), bits(ff), 'fake exec: int-format output differs from the float-format one');
        assert.notDeepEqual(bits(ff), bits(f));
        const after = fromInt.weightBytes();
        assert.equal(after.quantInt, 0);
        assert.ok(after.quantFloat > 0);

        // dequant(levels) == fake_quant(float weights), every weight, bit for bit
        for (const [n, l] of fromInt.layers) {
          const ref = fromFloat.layers.get(n)!;
          const fq = noGrad(() => ref.weightQuant.forward(ref.layer.weight));
          const want = Float32Array.from(fq.dataSync() as Float32Array);
          fq.dispose();
          const got = l.layer.weight.dataSync() as Float32Array;
          // The same float32 values; only the sign of a zero can differ (fake quantization keeps
          // round(-0.3) * s = -0, the level 0 has no sign), and -0 == +0 in every op after it.
          for (let k = 0; k < want.length; ++k)
            if (got[k] !== want[k])
              assert.fail(`${n}: weight ${k} dequantized to ${got[k]}, fake quantization gives ${want[k]}`);
        }
      } finally {
        fromOld.dispose();
        fromFloat.dispose();
        fromInt.dispose();
      }
    });
  });
}

describe("'int' weights format: bad files", () => {
  it('missing levels, float weights beside them, wrong dtype or shape, levels out of range, unknown format: typed errors naming the key', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-wfmt-bad-'));
    const qm = await calibrate(tinyUNet(2), resolveQuantConfig({ nBitW: 3, nBitA: 8, useDynamic: false }), { schedule: SCHEDULE, steps: 4, nSamples: 1, seed: 1, method: 'minmax' });
    const good = path.join(dir, 'int.safetensors');
    try {
      await saveQuantizedCheckpoint(good, { config: null, model: qm, weightsFormat: 'int' });
      const layer = [...qm.layers.keys()][1];
      const key = `model.${intWeightKey(layer, 3)}`;
      const variant = async (name: string, edit: (t: Map<string, Tensor>, meta: Record<string, string>) => void): Promise<string> => {
        const { tensors, metadata } = await readSafetensors(good);
        const meta = { ...(metadata ?? {}) };
        edit(tensors, meta);
        const f = path.join(dir, `${name}.safetensors`);
        await writeSafetensors(f, tensors, meta);
        for (const t of tensors.values()) t.dispose();
        return f;
      };
      const n = qm.layers.get(layer)!.layer.weight.size;
      const missing = await variant('missing', (t) => t.delete(key));
      await assert.rejects(load(missing), (e: Error) => e instanceof StateDictError && e.message.includes(`missing keys: "${intWeightKey(layer, 3)}"`));
      const both = await variant('both', (t) => t.set(`model.${layer}.weight`, fromArray(new Float32Array(n), qm.layers.get(layer)!.layer.weight.shape)));
      await assert.rejects(load(both), (e: Error) => e instanceof StateDictError && e.message.includes(`unexpected keys: "${layer}.weight"`));
      const dtype = await variant('dtype', (t) => t.set(key, fromArray(new Int8Array(Math.ceil(n / 2)), [Math.ceil(n / 2)], 'int8')));
      await assert.rejects(load(dtype), new RegExp(`TypeError: ${layer.replace(/\./g, '\\.')}\\.weight_int4: expected uint8 \\[${Math.ceil(n / 2)}\\]`));
      const shape = await variant('shape', (t) => t.set(key, fromArray(new Uint8Array(3), [3], 'uint8')));
      await assert.rejects(load(shape), /weight_int4: expected uint8 .* got uint8 \[3\]/);
      // 3-bit weights: levels -4..3; the nibble 0x7 is level 7
      const range = await variant('range', (t) => t.set(key, fromArray(new Uint8Array(Math.ceil(n / 2)).fill(0x77), [Math.ceil(n / 2)], 'uint8')));
      await assert.rejects(load(range), (e: Error) => e instanceof RangeError && /weight_int4: element 0 = 7 is outside the 3-bit range -4\.\.3/.test(e.message));
      const fmt = await variant('fmt', (_t, m) => (m.quant_weights = 'int2'));
      await assert.rejects(load(fmt), /metadata 'quant_weights' must be 'int' or 'float', got "int2"/);
    } finally {
      qm.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
