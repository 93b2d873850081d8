// The PyTorch bench servers (bench/torch_diffusion.py, bench/ldm_churches_torch.py)
// on their shared scaffolding (bench/torch_server.py): the command line
// (--help, a bad thread count exits 2 naming it) and the smallest case of
// each, spoken to as their node sides do (one JSON object a line).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const PY = '/usr/bin/python3';
const noTorch = spawnSync(PY, ['-c', 'import torch, numpy'], { stdio: 'ignore' }).status !== 0 ? `${PY} with torch and numpy is not installed` : false;
const script = (name: string) => path.join(ROOT, 'bench', name);

/** Sends `requests` one a line and returns the responses, parsed. */
function converse(name: string, requests: object[]): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const p = spawn(PY, [script(name), '1', '--wait-policy', 'passive'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => (code === 0 ? resolve(out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)) : reject(new Error(`${name} exited ${code}: ${err}`))));
    p.stdin.end(requests.map((r) => JSON.stringify(r)).join('\n') + '\n');
  });
}

describe('bench PyTorch servers (bench/torch_server.py)', { skip: noTorch }, () => {
  for (const name of ['torch_diffusion.py', 'ldm_churches_torch.py']) {
    it(`${name}: --help prints its protocol; a bad thread count exits 2 naming it`, () => {
      const help = spawnSync(PY, [script(name), '--help'], { encoding: 'utf8' });
      assert.equal(help.status, 0, help.stderr);
      assert.match(help.stdout, /--wait-policy \{inherit,passive,active\}/);
      assert.match(help.stdout, /one JSON object\s+(per|a)\s+line/);
      const bad = spawnSync(PY, [script(name), '0'], { encoding: 'utf8' });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /argument threads: must be a positive integer, got 0/);
    });
  }

  it('torch_diffusion.py: info, a one-step DDIM case timed, memory; an unknown request is an error line', async () => {
    const unet = { image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, attention_resolutions: [2], channel_mult: [1, 1], num_heads: 2 };
    const [info, setup, run, mem, unknown] = await converse('torch_diffusion.py', [
      { info: true },
      { setup: { model: 'openai', unet, mode: 'sample', batch: 1, shape: [1, 8, 8], seed: 0, ddim: [[10, 1.0, 0.1]] } },
      { run: 2 },
      { memory: true },
      { bogus: 1 },
    ]);
    assert.deepEqual([info.threads, info.omp_wait_policy], [1, 'PASSIVE']);
    assert.ok((setup.params as number) > 0 && (setup.rss_bytes as number) > 0);
    assert.equal((run.ms as number[]).length, 2);
    assert.equal((run.cpu_ms as number[]).length, 2);
    assert.ok((mem.peak_rss_bytes as number) >= (mem.rss_bytes as number) && (mem.rss_bytes as number) > 0);
    assert.match(unknown.error as string, /unknown request/);
  });

  it('ldm_churches_torch.py: loads the tiny LDM checkpoint, one DDIM step and the decode', async () => {
    const unet = { image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [1], num_res_blocks: 1, channel_mult: [1], num_heads: 2 };
    const ddconfig = { double_z: true, z_channels: 3, resolution: 16, in_channels: 1, out_ch: 1, ch: 8, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0, norm_num_groups: 4 };
    const z = Array.from({ length: 3 * 8 * 8 }, (_, i) => Math.sin(i));
    const [load, ddim, decode, reset] = await converse('ldm_churches_torch.py', [
      { load: path.join(ROOT, 'test', 'fixtures', 'latent', 'tiny_ldm_uncond.ckpt'), unet, ddconfig, embed_dim: 3 },
      { ddim: { x: z, shape: [3, 8, 8], steps: [[999, 0.01, 0.5]] } },
      { decode: { z, shape: [3, 8, 8] } },
      { reset_peak: true },
    ]);
    assert.equal(load.error, undefined, String(load.error));
    assert.ok((load.params_unet as number) > 0 && (load.params_first_stage as number) > 0);
    assert.equal(load.threads, 1);
    assert.deepEqual([(ddim.step_ms as number[]).length, (ddim.z as number[]).length, (ddim.eps0 as number[]).length], [1, 192, 192]);
    assert.ok((ddim.z as number[]).every(Number.isFinite));
    assert.equal((decode.image as number[]).length, 16 * 16);
    assert.equal(reset.ok, true);
  });
});
