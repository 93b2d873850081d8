// Data-parallel training over MPI: 2 ranks with half the batch each end where
// 1 rank with the whole batch ends (full precision and TDQ QAT); a run started
// on 2 ranks resumes on 1; a killed rank stops the job in bounded time and the
// run resumes from its last checkpoint; ranks that disagree refuse to start.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { readTensors } from '../helpers/checkpoints';
import { mpiSkip } from '../helpers/mpi';
import { tinyDdpYaml, tinyLdmYaml } from '../helpers/configs';

const bin = path.join(__dirname, '..', '..', '..', 'bin', 'tdq-native.js');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-ddp-'));
after(() => process.env.KEEP_TMP ? undefined : fs.rmSync(root, { recursive: true, force: true }));

function config(name: string, o: { seed?: number; maxSteps?: number; every?: number; accumulate?: number } = {}): string {
  const f = path.join(root, `${name}.yaml`);
  fs.writeFileSync(f, tinyDdpYaml({ maxSteps: o.maxSteps, seed: o.seed, checkpointEvery: o.every, accumulate: o.accumulate }));
  return f;
}

function cli(args: string[], timeoutMs = 240_000) {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, TDQ_NUM_THREADS: '1' } });
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

/**
 * The largest difference between two weight sets, relative to the largest
 * weight: trained float tensors only (calibration statistics and step tables
 * are not weights, and their magnitudes would hide a difference).
 */
async function maxRelDiff(a: string, b: string): Promise<number> {
  const wa = await readTensors(a), wb = await readTensors(b);
  assert.deepEqual([...wa.keys()].sort(), [...wb.keys()].sort());
  let diff = 0, scale = 0;
  for (const [k, x] of wa) {
    if (!(x instanceof Float32Array) || /calib|table/.test(k)) continue;
    const y = wb.get(k)!;
    for (let i = 0; i < x.length; ++i) {
      diff = Math.max(diff, Math.abs(x[i] - y[i]));
      scale = Math.max(scale, Math.abs(x[i]));
    }
  }
  return diff / scale;
}

// The ranks' gradient sums differ from one process's only in the order of
// additions (float32); six Adam steps keep that below this.
const TOL = 1e-4;

describe('data-parallel training (MPI)', { skip: mpiSkip() }, () => {
  const cfg = config('tiny');

  it('2 ranks x batch 4 end with the weights of 1 rank x batch 8 (full precision), and resume on 1 rank', async () => {
    const one = cli(['train', '--base', cfg, '--name', 'one']);
    assert.equal(one.status, 0, one.out);
    const two = cli(['train', '--base', cfg, '--name', 'two', '--nproc', '2']);
    assert.equal(two.status, 0, two.out);
    const d = await maxRelDiff(path.join(root, 'runs/one/model.safetensors'), path.join(root, 'runs/two/model.safetensors'));
    assert.ok(d < TOL, `relative difference ${d}`);
    fs.copyFileSync(path.join(root, 'runs/two/model.safetensors'), path.join(root, 'two-ranks.safetensors'));
    // The 2-rank run's step-3 checkpoint continues on 1 rank to the same end.
    const res = cli(['train', '--base', cfg, '--resume', path.join(root, 'runs/two/checkpoints/step-00000003.safetensors')]);
    assert.equal(res.status, 0, res.out);
    assert.match(res.out, /resumed from .*step-00000003\.safetensors at step 3/);
    const d2 = await maxRelDiff(path.join(root, 'runs/one/model.safetensors'), path.join(root, 'runs/two/model.safetensors'));
    assert.ok(d2 < TOL, `after resume: relative difference ${d2}`);
    // The seed's flags map onto the same launch.
    const seed = cli(['train', '--base', cfg, '--name', 'gpus', '--gpus', '0,1', '--accelerator', 'ddp']);
    assert.equal(seed.status, 0, seed.out);
    assert.ok((await maxRelDiff(path.join(root, 'two-ranks.safetensors'), path.join(root, 'runs/gpus/model.safetensors'))) === 0, 'the same 2-rank run twice is bit for bit the same');
  });

  it('gradient buckets allreduced during the backward pass (10 KiB buckets, 2 micro-batches) end bit for bit where one allreduce after it ends', async () => {
    // A bucket started before its last gradient was added (a parameter used
    // twice, or a micro-batch before the last) would leave that part unreduced.
    const acc = config('accumulate', { accumulate: 2, maxSteps: 3 });
    const one = cli(['train', '--base', acc, '--name', 'nooverlap', '--nproc', '2', '--bucket-mb', '0']);
    assert.equal(one.status, 0, one.out);
    const many = cli(['train', '--base', acc, '--name', 'buckets', '--nproc', '2', '--bucket-mb', '0.01']);
    assert.equal(many.status, 0, many.out);
    const d = await maxRelDiff(path.join(root, 'runs/nooverlap/model.safetensors'), path.join(root, 'runs/buckets/model.safetensors'));
    assert.equal(d, 0, `relative difference ${d}`);
    const bad = cli(['train', '--base', acc, '--name', 'badbucket', '--bucket-mb', '-1']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.out, /--bucket-mb must be a number of MiB >= 0 \(0: no overlap\), got -1/);
  });

  it('TDQ QAT (W8A8) on 2 ranks ends where it ends on 1 rank', async () => {
    const fp = path.join(root, 'runs/one/model.safetensors');
    const q = ['--ckpt', fp, '--n-bit-w', '8', '--n-bit-a', '8', '--use-dynamic', '--calib-samples', '2', '--calib-steps', '4', '--max-steps', '4', '--weights-format', 'float'];
    const one = cli(['train', '--base', cfg, '--name', 'q1', ...q]);
    assert.equal(one.status, 0, one.out);
    const two = cli(['train', '--base', cfg, '--name', 'q2', '--nproc', '2', ...q]);
    assert.equal(two.status, 0, two.out);
    const d = await maxRelDiff(path.join(root, 'runs/q1/model.safetensors'), path.join(root, 'runs/q2/model.safetensors'));
    assert.ok(d < TOL, `relative difference ${d}`);
  });

  it('latent diffusion (class-conditional, trainable cond stage, scale_by_std) on 2 ranks ends where it ends on 1 rank', async () => {
    // Every draw (posterior sample, timesteps, noise) is made for the global batch and sliced; scale_by_std is the global batch's.
    const ldm = path.join(root, 'ldm.yaml');
    fs.writeFileSync(ldm, tinyLdmYaml({ maxSteps: 4 }).replace('dropout: 0.2', 'dropout: 0'));
    const one = cli(['train', '--base', ldm, '--name', 'ldm1']);
    assert.equal(one.status, 0, one.out);
    const two = cli(['train', '--base', ldm, '--name', 'ldm2', '--nproc', '2']);
    assert.equal(two.status, 0, two.out);
    const s1 = /scale_factor = ([\d.e-]+)/.exec(one.out)?.[1], s2 = /scale_factor = ([\d.e-]+)/.exec(two.out)?.[1];
    assert.ok(s1 && s2 && Math.abs(Number(s1) - Number(s2)) <= 1e-5 * Number(s1), `scale_factor ${s1} (1 rank) vs ${s2} (2 ranks)`);
    const d = await maxRelDiff(path.join(root, 'runs/ldm1/model.safetensors'), path.join(root, 'runs/ldm2/model.safetensors'));
    assert.ok(d < TOL, `relative difference ${d}`);
  });

  it('ranks that disagree on the config refuse to start, naming the difference', () => {
    const other = config('other', { seed: 12 });
    const r = spawnSync('mpirun', [
      '--oversubscribe', ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : []),
      '-np', '1', process.execPath, bin, 'train', '--base', cfg, '--name', 'dis', ':',
      '-np', '1', process.execPath, bin, 'train', '--base', other, '--name', 'dis',
    ], { cwd: root, encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(r.status, 0);
    assert.match(`${r.stdout}${r.stderr}`, /rank 1 does not agree with rank 0: config\.training\.seed: 11 vs 12/);
  });

  it('a killed rank stops the job within seconds; --resume continues from the last complete checkpoint', async () => {
    const long = config('long', { maxSteps: 100000, every: 2 });
    const child = spawn(process.execPath, [bin, 'train', '--base', long, '--name', 'killed', '--nproc', '2'], { cwd: root, env: { ...process.env, TDQ_NUM_THREADS: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    // Wait for a few steps, then SIGKILL one rank (a node process under mpirun).
    const ckdir = path.join(root, 'runs/killed/checkpoints');
    for (let i = 0; i < 600 && !(fs.existsSync(ckdir) && fs.readdirSync(ckdir).some((f) => f === 'step-00000004.safetensors')); ++i) await new Promise((r) => setTimeout(r, 100));
    const ranks = spawnSync('pgrep', ['-f', `${bin} train --base ${long} --name killed`], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number).filter((p) => p !== child.pid);
    assert.ok(ranks.length >= 2, `rank processes: ${ranks.join(', ')}\n${out}`);
    const t0 = Date.now();
    process.kill(ranks[ranks.length - 1], 'SIGKILL');
    const code = await Promise.race([exited, new Promise<'hang'>((r) => setTimeout(() => r('hang'), 60_000))]);
    assert.notEqual(code, 'hang', 'the job stopped');
    assert.notEqual(code, 0);
    assert.ok(Date.now() - t0 < 60_000);
    assert.match(out, /exited on signal 9|killed/i);
    // mpirun returns as it tears the job down: the other rank is gone within seconds.
    const alive = () => ranks.filter((p) => { try { process.kill(p, 0); return true; } catch { return false; } });
    for (let i = 0; i < 300 && alive().length; ++i) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(alive(), [], 'no rank is left running');
    const done = fs.readdirSync(ckdir).filter((f) => /^step-\d+\.safetensors$/.test(f)).sort();
    const last = Number(done[done.length - 1].slice(5, 13));
    const res = cli(['train', '--base', long, '--resume', path.join(root, 'runs/killed'), '--max-steps', String(last + 1)]);
    assert.equal(res.status, 0, res.out);
    assert.match(res.out, new RegExp(`at step ${last}\\b`));
  });
});
