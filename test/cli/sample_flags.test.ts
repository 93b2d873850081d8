import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-sample-flags-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
const pngs = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^\d+\.png$/.test(f)).sort() : []);

describe('sample: step layouts', () => {
  it('--custom-steps 3 with the uniform layout fails naming the nearest counts and the other layouts; linspace / trailing run it', () => {
    const bad = run(['sample', '-n', '1', '--custom-steps', '3', '--outdir', path.join(tmp, 'u3')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--custom-steps 3: .*'uniform'.*near 3: 2, 4.*'linspace' or 'trailing' \(--ddim-discretize\)/);
    assert.deepEqual(pngs(path.join(tmp, 'u3')), [], 'nothing sampled');
    for (const layout of ['linspace', 'trailing']) {
      const out = path.join(tmp, `l3-${layout}`);
      const r = run(['sample', '-n', '1', '--custom-steps', '3', '--ddim-discretize', layout, '--outdir', out, '--no-grid']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /wrote 1 images to .* \(ddim, 3 steps/);
      assert.deepEqual(pngs(out), ['000000.png']);
    }
  });

  it('a uniform count that LDM lays out with more steps warns and says how many run', () => {
    const r = run(['sample', '-n', '1', '--custom-steps', '6', '--outdir', path.join(tmp, 'u6'), '--no-grid']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /warning: --custom-steps 6: the 'uniform' layout \(LDM's\) runs 7 steps, not 6/);
    assert.match(r.stdout, /\(ddim, 7 steps/);
  });
});

describe('sample: flags that do not apply are errors', () => {
  const cases: [string, string[], RegExp][] = [
    ['--custom-steps with ddpm', ['--sampler', 'ddpm', '--custom-steps', '20'], /--custom-steps does not apply to --sampler ddpm/],
    ['--eta with ddpm', ['--sampler', 'ddpm', '--eta', '1'], /--eta does not apply to --sampler ddpm/],
    ['--eta with dpmpp', ['--sampler', 'dpmpp', '--eta', '0.5'], /--eta 0\.5 does not apply to --sampler dpmpp/],
    ['--ddim-discretize with dpmpp', ['--sampler', 'dpmpp', '--ddim-discretize', 'linspace'], /--ddim-discretize does not apply to --sampler dpmpp/],
    ['--class on an unconditional model', ['--class', '3'], /--class 3: .*unconditional model/],
    ['more steps than the schedule has', ['--custom-steps', '1001'], /--custom-steps must be an integer in \[1, 1000\]/],
  ];
  for (const [name, args, re] of cases) {
    it(name, () => {
      const out = path.join(tmp, `bad-${name.replace(/\W+/g, '-')}`);
      const r = run(['sample', '-n', '1', ...args, '--outdir', out]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, re);
      assert.deepEqual(pngs(out), []);
    });
  }
});

describe('sample: bounded resources', () => {
  it('--n-samples 1e12 with a huge batch is refused before allocating, stating the bytes and the limit', () => {
    const r = run(['sample', '--n-samples', '1e12', '--batch-size', '1e9', '--outdir', path.join(tmp, 'huge')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /would need about [\d.]+ [KMGTPE]iB \(\d+ bytes\).*over the limit of [\d.]+ [KMGTPE]iB \(\d+ bytes\) \(80% of this machine's/);
    assert.match(r.stderr, /--max-memory or \$TDQ_MAX_MEMORY/);
  });

  it('the limit comes from --max-memory, else $TDQ_MAX_MEMORY', () => {
    const env = run(['sample', '-n', '1', '--outdir', path.join(tmp, 'env')], { TDQ_MAX_MEMORY: '1M' });
    assert.equal(env.code, 1);
    assert.match(env.stderr, /over the limit of 1\.0 MiB \(1048576 bytes\) \(\$TDQ_MAX_MEMORY\)/);
    const flag = run(['sample', '-n', '1', '--max-memory', '2M', '--outdir', path.join(tmp, 'flag')], { TDQ_MAX_MEMORY: '64G' });
    assert.equal(flag.code, 1);
    assert.match(flag.stderr, /over the limit of 2\.0 MiB \(2097152 bytes\) \(--max-memory\)/);
    const bad = run(['sample', '-n', '1', '--max-memory', 'lots', '--outdir', path.join(tmp, 'flag')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--max-memory: expected bytes like 8G/);
  });

  it('writes PNGs batch by batch: a large --n-samples has files on disk after the first batches', async () => {
    const out = path.join(tmp, 'stream');
    const child = spawn(process.execPath, [bin, 'sample', '--n-samples', '100000', '--batch-size', '1', '--custom-steps', '1', '--outdir', out, '--no-grid'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    let exited = false;
    child.on('exit', () => (exited = true));
    // Wait (at most 90 s) until 3 PNGs are on disk, while the run of 100000 images goes on.
    for (let i = 0; i < 450 && !exited && pngs(out).length < 3; ++i) await new Promise((r) => setTimeout(r, 200));
    const running = !exited;
    child.kill('SIGKILL');
    if (!exited) await new Promise((r) => child.once('close', r));
    assert.ok(running, `the run ended early: ${err}`);
    assert.match(err, /^sampling: batch 1\/100000, 1\/100000 images \(0%\)$/m);
    assert.ok(pngs(out).length >= 3, `PNGs of finished batches are on disk: ${pngs(out).join(', ')}`);
  });
});

describe('sample: output folder and progress', () => {
  it('an unwritable --outdir fails before sampling', () => {
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, 'x');
    const r = run(['sample', '-n', '1', '--outdir', path.join(file, 'sub')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--outdir .*a-file\/sub is not writable \(ENOTDIR.*nothing was sampled/);
    assert.doesNotMatch(r.stderr, /sampling/);
  });

  it('off a terminal, progress is one line per batch', () => {
    const out = path.join(tmp, 'progress');
    const r = run(['sample', '-n', '3', '--batch-size', '1', '--custom-steps', '2', '--outdir', out]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('sampling'));
    assert.deepEqual(lines, ['sampling: batch 1/3, 1/3 images (33%)', 'sampling: batch 2/3, 2/3 images (66%)', 'sampling: batch 3/3, 3/3 images (100%)']);
    assert.deepEqual(pngs(out), ['000000.png', '000001.png', '000002.png']);
    assert.ok(fs.existsSync(path.join(out, 'grid.png')));
    assert.equal(run(['sample', '-n', '1', '--custom-steps', '2', '--no-progress', '--outdir', out]).stderr, '');
  });
});

describe('eval, calibrate, inspect: flags validated before loading', () => {
  const ckpt = path.join(root, 'models', 'fmnist-small.safetensors');
  const cases: [string, string[], RegExp][] = [
    ['eval --steps with ddpm', ['eval', '--ckpt', ckpt, '--sampler', 'ddpm', '--steps', '5', '--metrics', 'is'], /--steps does not apply to --sampler ddpm/],
    ['eval --eta with plms', ['eval', '--ckpt', ckpt, '--sampler', 'plms', '--eta', '1', '--metrics', 'is'], /--eta 1 does not apply to --sampler plms/],
    ['eval uniform steps 37', ['eval', '--ckpt', ckpt, '--steps', '37', '--metrics', 'is'], /--steps 37: .*near 37: .*--ddim-discretize/],
    ['eval --n 1e12 held in memory', ['eval', '--ckpt', ckpt, '--n', '1e12', '--metrics', 'is'], /generating 1000000000000 images for eval would need about .* over the limit of/],
    ['eval --steps with --samples', ['eval', '--samples', tmp, '--steps', '5', '--metrics', 'is'], /--steps applies to --ckpt only/],
    ['calibrate uniform steps 3', ['calibrate', '--ckpt', ckpt, '--steps', '3'], /--steps 3: .*near 3: 2, 4$/m],
    ['calibrate --steps with ddpm', ['calibrate', '--ckpt', ckpt, '--sampler', 'ddpm', '--steps', '5'], /--steps does not apply to --sampler ddpm/],
    ['calibrate --percentile with mse', ['calibrate', '--ckpt', ckpt, '--method', 'mse', '--percentile', '99'], /--percentile applies to --method percentile/],
    ['calibrate huge batch', ['calibrate', '--ckpt', ckpt, '--n-samples', '1e9', '--batch-size', '1e9'], /calibrating with batches of 1000000000 would need about/],
    ['inspect --max-plots bound', ['inspect', '--ckpt', ckpt, '--max-plots', '100000'], /--max-plots must be at most 64/],
    ['inspect --out-dir with --no-plots', ['inspect', '--ckpt', ckpt, '--no-plots', '--out-dir', tmp], /--out-dir does not apply with --no-plots/],
  ];
  for (const [name, args, re] of cases) {
    it(name, () => {
      const r = run(args);
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.match(r.stderr, re);
    });
  }
});
