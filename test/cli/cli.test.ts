import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { CliError, type Command, main } from '../../src/cli';

const root = path.resolve(__dirname, '..', '..', '..');
const bin = path.join(root, 'bin', 'tdq-native.js');
const version = (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(args: string[], env: Record<string, string> = {}, script = bin) {
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('tdq-native CLI', () => {
  it('--help lists the commands and global options and exits 0', () => {
    const r = run(['--help']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /tdq-native <command>/);
    assert.match(r.stdout, /tdq-native info/);
    assert.match(r.stdout, /--threads/);
    assert.match(r.stdout, /--verbose/);
  });

  it('--version prints the package version', () => {
    const r = run(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.trim(), version);
  });

  it('info prints the engine: CPU level and features, threads, CUDA, ops, version', () => {
    const r = run(['info']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^tdq-native ${version.replace(/\./g, '\\.')}$`, 'm'));
    assert.match(r.stdout, /^cpu level: (scalar|avx2|avx512) \(best available: (scalar|avx2|avx512)\)$/m);
    assert.match(r.stdout, /^int8 kernel: (scalar|avx2|avx512-vnni)$/m);
    assert.match(r.stdout, /^cpu features: /m);
    assert.match(r.stdout, /^threads: \d+$/m);
    assert.match(r.stdout, /^cuda: (available|not built|built but unavailable)/m);
    assert.match(r.stdout, /^ops: \d+ \(/m);
    assert.match(r.stdout, /\badd\b.*\bsub\b|\badd\b/);
    assert.equal(r.stderr, '');
  });

  it('--threads sets the engine threads; info --json is machine-readable', () => {
    const r = run(['--threads', '1', 'info', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as { version: string; threads: number; ops: { name: string }[]; cuda: { built: boolean } };
    assert.equal(info.version, version);
    assert.equal(info.threads, 1);
    assert.ok(info.ops.some((o) => o.name === 'add'));
    assert.equal(typeof info.cuda.built, 'boolean');
  });

  it('an unknown option exits 1 with the usage and the problem', () => {
    const r = run(['info', '--bogus']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /tdq-native info/); // the command's usage
    assert.match(r.stderr, /tdq-native: Unknown argument: bogus\n$/);
  });

  it('an unknown command exits 1, suggesting a near one', () => {
    const r = run(['nope']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Commands:/);
    assert.match(r.stderr, /tdq-native: Unknown command: nope\n$/);
    assert.match(run(['inf']).stderr, /Unknown command: inf \(did you mean info\?\)/);
    assert.match(run(['info', 'extra']).stderr, /tdq-native: Unexpected argument: extra/);
  });

  it('no command and a bad --threads are usage errors', () => {
    const r = run([]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /tdq-native: a command is required/);
    const t = run(['--threads', '0', 'info']);
    assert.equal(t.code, 1);
    assert.match(t.stderr, /tdq-native: --threads must be a positive integer, got 0/);
  });

  it('a failing command prints one line and exits 1; --verbose adds the stack', () => {
    const env = { TDQ_ADDON_PATH: path.join(tmp, 'missing.node') };
    const r = run(['info'], env);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tdq-native: could not load the native addon \(tried .*missing\.node\)/);
    assert.doesNotMatch(r.stderr, /tdq-native: tdq-native:/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const v = run(['info', '--verbose'], env);
    assert.equal(v.code, 1);
    assert.match(v.stderr, /\n\s+at /);
  });

  it('says to build when dist is missing', () => {
    const fake = path.join(tmp, 'pkg', 'bin');
    fs.mkdirSync(fake, { recursive: true });
    fs.copyFileSync(bin, path.join(fake, 'tdq-native.js'));
    const r = run(['info'], {}, path.join(fake, 'tdq-native.js'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /not compiled\. Run 'npm run build:ts'/);
  });
});

describe('command registration', () => {
  const calls: unknown[] = [];
  const echo: Command = {
    command: 'echo <word>',
    describe: 'test command',
    builder: (y) => y.positional('word', { type: 'string' }).option('fail', { type: 'boolean', default: false }).option('user', { type: 'boolean', default: false }),
    handler: async (a) => {
      if (a.fail) throw new Error('it broke');
      if (a.user) throw new CliError('bad input from the user');
      calls.push(a.word);
    },
  };

  it('runs commands from the given list and maps their errors to exit 1', async () => {
    let err = '';
    const opts = { commands: [echo], err: (s: string) => (err += s) };
    assert.equal(await main(['echo', 'hi'], opts), 0);
    assert.deepEqual(calls, ['hi']);
    assert.equal(await main(['echo', 'hi', '--fail'], opts), 1);
    assert.equal(err, 'tdq-native: it broke\n');
    err = '';
    assert.equal(await main(['echo', 'x', '--user', '--verbose'], opts), 1);
    assert.equal(err, 'tdq-native: bad input from the user\n'); // a CliError has no stack even when verbose
    err = '';
    assert.equal(await main(['echo', 'x', '--fail', '--verbose'], opts), 1);
    assert.match(err, /^tdq-native: it broke\nError: it broke\n\s+at /);
    err = '';
    assert.equal(await main(['echo'], opts), 1);
    assert.match(err, /Not enough non-option arguments/);
  });
});
