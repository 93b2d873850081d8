import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

import { BenchArgs, BenchArgsError, type BenchOptions, finiteNumber, helpText, nonNegativeInt, parseBenchArgs, parseNumber } from '../../bench/args';

const OPTIONS: BenchOptions = {
  steps: { type: 'string', value: 'N', default: '5', help: 'sampling steps' },
  seeds: { type: 'string', default: '0,1', help: 'seeds' },
  out: { type: 'string', value: 'FILE', help: 'report' },
  mode: { type: 'string', default: 'int', help: 'exec' },
  quick: { type: 'boolean', help: 'fewer runs' },
};

function parse(argv: string[]): BenchArgs {
  const a = parseBenchArgs(OPTIONS, argv);
  assert.ok(a instanceof BenchArgs);
  return a;
}

describe('bench/args: command lines of the bench scripts', () => {
  it('applies defaults, reads values and flags', () => {
    const a = parse([]);
    assert.equal(a.int('steps'), 5);
    assert.deepEqual(a.numList('seeds', { integer: true }), [0, 1]);
    assert.equal(a.get('out'), undefined);
    assert.equal(a.optInt('out'), undefined);
    assert.equal(a.flag('quick'), false);
    const b = parse(['--steps', '12', '--seeds=3,4,5', '--quick', '--out', 'r.md', '--mode', 'fake']);
    assert.equal(b.int('steps', 1), 12);
    assert.deepEqual(b.numList('seeds'), [3, 4, 5]);
    assert.equal(b.str('out'), 'r.md');
    assert.equal(b.flag('quick'), true);
    assert.equal(b.choice('mode', ['int', 'fake']), 'fake');
  });

  it('rejects an unknown flag, a missing value and a stray argument, naming them', () => {
    assert.throws(() => parseBenchArgs(OPTIONS, ['--stepz', '3']), (e: Error) => e instanceof BenchArgsError && /'--stepz'/.test(e.message));
    assert.throws(() => parseBenchArgs(OPTIONS, ['--steps']), (e: Error) => e instanceof BenchArgsError && /--steps/.test(e.message));
    assert.throws(() => parseBenchArgs(OPTIONS, ['--quick=yes']), (e: Error) => e instanceof BenchArgsError && /--quick/.test(e.message));
    assert.throws(() => parseBenchArgs(OPTIONS, ['3']), (e: Error) => e instanceof BenchArgsError && /'3'/.test(e.message));
  });

  it('validates numbers and choices with a message naming the flag and the value', () => {
    assert.throws(() => parse(['--steps', 'ten']).int('steps'), { name: 'BenchArgsError', message: "--steps: expected an integer >= 0, got 'ten'" });
    assert.throws(() => parse(['--steps', '2.5']).int('steps', 1), { message: "--steps: expected an integer >= 1, got '2.5'" });
    assert.throws(() => parse(['--steps', '0']).int('steps', 1), { message: "--steps: expected an integer >= 1, got '0'" });
    assert.throws(() => parse(['--steps', '']).num('steps'), { message: "--steps: expected a number, got ''" });
    assert.throws(() => parse(['--seeds', '1,x']).numList('seeds', { min: 0 }), { message: "--seeds: expected a number >= 0, got 'x'" });
    assert.throws(() => parse(['--mode', 'gpu']).choice('mode', ['int', 'fake']), { message: "--mode: expected one of int, fake, got 'gpu'" });
    assert.throws(() => parse([]).str('out'), { message: '--out is required' });
    assert.equal(parseNumber('lambda', '0.25', { min: 0 }), 0.25);
  });

  it("readOr / readListOr: the value, else the option's default, through the parser (each trimmed item), else the given default", () => {
    assert.equal(parse([]).readOr('out', nonNegativeInt, 7), 7);
    assert.equal(parse([]).readOr('steps', nonNegativeInt, 7), 5);
    assert.equal(parse(['--steps', '3']).readOr('steps', nonNegativeInt, 7), 3);
    assert.deepEqual(parse([]).readListOr('out', nonNegativeInt, [9]), [9]);
    assert.deepEqual(parse([]).readListOr('seeds', nonNegativeInt, []), [0, 1]);
    assert.deepEqual(parse(['--seeds', '4, 5']).readListOr('seeds', nonNegativeInt, []), [4, 5]);
    assert.throws(() => parse(['--seeds', '0,,2']).readListOr('seeds', nonNegativeInt, []), { name: 'BenchArgsError', message: "--seeds: expected a non-negative integer, got ''" });
    assert.throws(() => parse(['--steps=-1']).readOr('steps', nonNegativeInt, 0), { message: "--steps: expected a non-negative integer, got '-1'" });
    assert.throws(() => finiteNumber('lr', 'x'), { message: "--lr: expected a number, got 'x'" });
    assert.equal(finiteNumber('lr', '2e-4'), 2e-4);
  });

  it('--help and -h ask for the help, which lists every option with its default', () => {
    assert.equal(parseBenchArgs(OPTIONS, ['--help']), 'help');
    assert.equal(parseBenchArgs(OPTIONS, ['--steps', '3', '-h']), 'help');
    const h = helpText('node x.js [options]', OPTIONS);
    assert.match(h, /^usage: node x\.js \[options\]/);
    assert.match(h, /--steps <N> +sampling steps \(default: 5\)/);
    assert.match(h, /--out <FILE> +report$/m);
    assert.match(h, /--quick +fewer runs$/m);
    assert.match(h, /--help, -h/);
  });
});

// Each script parses its command line before any work: --help lists its
// options, and an unknown flag fails (exit 2) naming it.
const SCRIPTS: Record<string, string[]> = {
  ort_compare: ['--cases', '--rounds', '--threads', '--out', '--no-profile', '--ort-spin', '--quant', '--calib-samples', '--calib-steps', '--tdq-t'],
  fid_spread: ['--ckpt', '--pool', '--sizes', '--steps', '--seed', '--cache', '--out'],
  ddp: ['--steps', '--batch', '--samples', '--rounds', '--out'],
  ddp_allreduce: ['--floats', '--rounds'],
  diffusion: ['--quick', '--threads', '--torch-threads', '--torch-wait-policy', '--rounds', '--out', '--no-torch', '--no-profile'],
  int_exec: ['--case', '--batch', '--reps', '--warmup', '--rounds', '--calib-samples', '--ways', '--out', '--profile'],
  int_memory: ['--models', '--batch', '--steps', '--out'],
  ldm_churches: ['--ckpt', '--steps', '--rounds', '--threads', '--no-cli', '--out'],
  memory: ['--batch', '--steps', '--out'],
  ops: ['--batch', '--threads', '--reps', '--warmup', '--rounds', '--out', '--no-torch'],
  qgemm: ['--batch', '--reps', '--warmup', '--rounds', '--levels', '--out'],
  tdq_ptq_lab: ['--ckpt', '--w', '--a', '--n-samples', '--steps', '--seeds', '--calib-samples', '--method', '--lambdas', '--schedules', '--per-layer', '--out'],
};

function runScript(name: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const file = path.resolve(__dirname, '..', '..', 'bench', `${name}.js`);
  return new Promise((resolve) => {
    execFile(process.execPath, [file, ...args], { encoding: 'utf8' }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }));
  });
}

describe('bench scripts: strict command lines', () => {
  for (const [name, flags] of Object.entries(SCRIPTS)) {
    it(`${name}: --help lists its options; an unknown flag or a bad number exits 2 naming it`, async () => {
      const numeric = ['--steps', '--batch', '--rounds'].find((f) => flags.includes(f))!;
      const [help, unknown, bad] = await Promise.all([runScript(name, ['--help']), runScript(name, ['--bogus-flag']), runScript(name, [numeric, 'many'])]);
      assert.equal(help.code, 0, help.stderr);
      for (const f of flags) assert.ok(help.stdout.includes(`${f} `) || help.stdout.includes(`${f}\n`), `${name} --help lacks ${f}:\n${help.stdout}`);
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /--bogus-flag/);
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, new RegExp(`^${numeric}: expected an integer >= 1, got 'many'`));
    });
  }
});

describe('bench/service_load: strict command line', () => {
  it('--help lists its options; an unknown flag, a bad number or one out of range exits 2 naming it, before any server starts', async () => {
    const [help, unknown, bad, high] = await Promise.all([
      runScript('service_load', ['--help']),
      runScript('service_load', ['--bogus-flag']),
      runScript('service_load', ['--connections', 'many']),
      runScript('service_load', ['--duration', '601']),
    ]);
    assert.equal(help.code, 0, help.stderr);
    for (const f of ['--duration', '--connections', '--rate', '--drop-every-ms', '--warmup', '--out']) assert.ok(help.stdout.includes(`${f} `), `--help lacks ${f}:\n${help.stdout}`);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /--bogus-flag/);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /^--connections: expected an integer >= 1, got 'many'/);
    assert.equal(high.code, 2, high.stderr);
    assert.match(high.stderr, /^--duration: expected at most 600, got '601'/);
  });
});

describe('bench/tdq_table: table and protocol modes', () => {
  it('--help lists each mode\'s options (repeatable flags marked); bad values exit 2 naming the flag', async () => {
    const [help, protoHelp, bad, protoBad] = await Promise.all([
      runScript('tdq_table', ['--help']),
      runScript('tdq_table', ['--ledger', 'x.json', '--help']),
      runScript('tdq_table', ['--steps', 'many']),
      runScript('tdq_table', ['--ledger', 'x.json', '--n', 'ten']),
    ]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--qat <w4a8-tdq=FILE> +a QAT checkpoint for a row \(repeatable\)/);
    assert.equal(protoHelp.code, 0, protoHelp.stderr);
    assert.match(protoHelp.stdout, /--qat-file <name=file> .*\(repeatable\)/);
    assert.match(protoHelp.stdout, /--ledger <FILE\.json>/);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /^--steps: expected a non-negative integer, got 'many'/);
    assert.equal(protoBad.code, 2, protoBad.stderr);
    assert.match(protoBad.stderr, /^--n: expected a non-negative integer, got 'ten'/);
  });
});

describe('bench/ddp and bench/ddp_allreduce', () => {
  it('an odd --batch (2 ranks split it) and a missing --floats exit 2 naming the flag, before any run', async () => {
    const [odd, noFloats] = await Promise.all([runScript('ddp', ['--batch', '33']), runScript('ddp_allreduce', ['--rounds', '3'])]);
    assert.equal(odd.code, 2, odd.stderr);
    assert.match(odd.stderr, /^--batch: expected an even integer \(2 ranks split it\), got '33'/);
    assert.equal(noFloats.code, 2, noFloats.stderr);
    assert.match(noFloats.stderr, /^--floats is required/);
  });
});
