// Parity of the UNets with PyTorch references of the upstream architectures:
// random weights made in PyTorch, saved as safetensors under upstream's keys,
// loaded here unchanged; outputs must agree to 1e-4 relative (float32).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { readSafetensors } from '../../src/io/safetensors';
import { DDPMUNet } from '../../src/models/ddpm_unet';
import { UNetModel, type UNetConfig } from '../../src/models/openai_unet';
import { noGrad } from '../../src/tensor/autograd';
import { assertClose } from '../helpers/assert';
import { torchUnavailable } from '../helpers/oracle';

const PYTHON = process.env.TDQ_PYTHON ?? '/usr/bin/python3';
const SCRIPT = path.resolve(__dirname, '..', '..', '..', 'test', 'reference', 'make_parity.py');
const RTOL = 1e-4;

function makeReference(kind: 'openai' | 'ddpm', cfg: object, seed: number, batch: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-parity-'));
  const r = spawnSync(PYTHON, [SCRIPT, kind, JSON.stringify(cfg), dir, String(seed), String(batch)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`make_parity.py failed: ${r.stderr}`);
  return dir;
}

async function compare(kind: 'openai' | 'ddpm', cfg: object, seed: number, batch: number): Promise<void> {
  const dir = makeReference(kind, cfg, seed, batch);
  try {
    const weights = await readSafetensors(path.join(dir, 'weights.safetensors'));
    const io = await readSafetensors(path.join(dir, 'io.safetensors'));
    const get = (k: string) => io.tensors.get(k)!;
    const model = kind === 'openai' ? new UNetModel(cfg as UNetConfig) : new DDPMUNet(cfg as never);
    model.eval();
    await model.loadStateDict(weights.tensors, { strict: true });
    const out = noGrad(() =>
      model instanceof UNetModel
        ? model.forward(get('x'), get('t'), (cfg as UNetConfig).num_classes ? get('y') : undefined)
        : model.forward(get('x'), get('t')),
    );
    assertClose((await out.data()) as Float32Array, (await get('out').data()) as Float32Array, RTOL, `${kind} output`);
    model.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('UNet parity with PyTorch references of the upstream code', { skip: torchUnavailable() ?? false }, () => {
  const base = { in_channels: 3, out_channels: 3, model_channels: 32, num_res_blocks: 1, channel_mult: [1, 2] };
  it('openaimodel.UNetModel: conv resampling, num_heads, attention at ds 2', () =>
    compare('openai', { ...base, image_size: 16, attention_resolutions: [2], num_heads: 2 }, 1, 2));
  it('openaimodel.UNetModel: resblock_updown, scale-shift norm, num_head_channels, classes', () =>
    compare('openai', { ...base, image_size: 16, attention_resolutions: [1, 2], num_head_channels: 16, use_scale_shift_norm: true, resblock_updown: true, num_classes: 5 }, 2, 2));
  it('openaimodel.UNetModel: avg-pool resampling, 2 res blocks, 3 levels', () =>
    compare('openai', { ...base, image_size: 16, num_res_blocks: 2, channel_mult: [1, 1, 2], conv_resample: false, attention_resolutions: [4], num_heads: 1 }, 3, 1));
  it('DDPM UNet: small', () =>
    compare('ddpm', { ch: 32, out_ch: 3, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [8], dropout: 0.1, in_channels: 3, resolution: 16 }, 4, 2));
  it('DDPM UNet: the CIFAR-10 architecture (ch 128, ch_mult 1,2,2,2, attention at 16)', () =>
    compare('ddpm', { ch: 128, out_ch: 3, ch_mult: [1, 2, 2, 2], num_res_blocks: 2, attn_resolutions: [16], dropout: 0.1, in_channels: 3, resolution: 32 }, 5, 1));
});
