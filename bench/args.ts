// Command-line options of the bench scripts, on node's util.parseArgs:
// strict (an unknown flag, a missing value or a stray argument is an error
// that names it), numbers validated with a message naming the flag, and
// --help (-h) printing the options.
//
//   const { steps, quick } = benchArgs('node dist/bench/x.js [options]', {
//     steps: { type: 'string', value: 'N', default: '5', help: 'sampling steps' },
//     quick: { type: 'boolean', help: 'fewer runs' },
//   }, (a) => ({ steps: a.int('steps', 1), quick: a.flag('quick') }));
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { packageRoot } from '../src/tensor/native';

export interface BenchOption {
  type: 'string' | 'boolean';
  /** One line for --help. */
  help: string;
  /** Placeholder of a string option's value in --help (default 'VALUE'). */
  value?: string;
  /** A string option's value when the flag is not given. */
  default?: string;
  /** The flag may be given more than once (read with all()). */
  multiple?: boolean;
}
export type BenchOptions = Record<string, BenchOption>;

/** The option definitions several bench scripts share. */
export const commonOptions = {
  /** --out FILE: the report file, by default bench/results/`name` of the package. */
  report: (name: string): BenchOption => ({ type: 'string', value: 'FILE', default: path.join(packageRoot, 'bench', 'results', name), help: 'report file' }),
  /** --threads N: by default every CPU. */
  threads: (help = 'threads of both engines'): BenchOption => ({ type: 'string', value: 'N', default: String(os.cpus().length), help: `${help} (default: every CPU)` }),
  /** --reps N (5) timed calls per block, --warmup N (2) untimed calls before timing. */
  repsWarmup: () =>
    ({
      reps: { type: 'string', value: 'N', default: '5', help: 'timed calls per block' },
      warmup: { type: 'string', value: 'N', default: '2', help: 'untimed calls before timing' },
    }) satisfies BenchOptions,
};

/** A command line a bench script does not accept; the message names the flag. */
export class BenchArgsError extends Error {
  override name = 'BenchArgsError';
}

/** The --help text: usage, then one line an option with its default. */
export function helpText(usage: string, options: BenchOptions): string {
  const rows = Object.entries(options).map(([name, o]) => [`--${name}${o.type === 'string' ? ` <${o.value ?? 'VALUE'}>` : ''}`, o.help + (o.multiple ? ' (repeatable)' : '') + (o.default !== undefined ? ` (default: ${o.default})` : '')]);
  rows.push(['--help, -h', 'print this help and exit']);
  const w = Math.max(...rows.map((r) => r[0].length));
  return [`usage: ${usage}`, '', 'options:', ...rows.map(([f, h]) => `  ${f.padEnd(w)}  ${h}`)].join('\n');
}

/** A number given as `--flag text`, or a BenchArgsError naming the flag. */
export function parseNumber(flag: string, text: string, opts: { integer?: boolean; min?: number } = {}): number {
  const n = text.trim() === '' ? NaN : Number(text);
  const what = `${opts.integer ? 'an integer' : 'a number'}${opts.min !== undefined ? ` >= ${opts.min}` : ''}`;
  if (!Number.isFinite(n) || (opts.integer && !Number.isInteger(n)) || (opts.min !== undefined && n < opts.min)) throw new BenchArgsError(`--${flag}: expected ${what}, got '${text}'`);
  return n;
}

/** `--flag text` as a whole number >= 0, or a BenchArgsError naming the flag (the TDQ scripts' wording). */
export function nonNegativeInt(flag: string, text: string): number {
  const x = Number(text);
  if (text.trim() === '' || !Number.isInteger(x) || x < 0) throw new BenchArgsError(`--${flag}: expected a non-negative integer, got '${text}'`);
  return x;
}

/** `--flag text` as a finite number, or a BenchArgsError naming the flag (the TDQ scripts' wording). */
export function finiteNumber(flag: string, text: string): number {
  const x = Number(text);
  if (text.trim() === '' || !Number.isFinite(x)) throw new BenchArgsError(`--${flag}: expected a number, got '${text}'`);
  return x;
}

/** Parsed options, read by name with their defaults applied. */
export class BenchArgs {
  constructor(
    private readonly values: Record<string, string | boolean | string[] | undefined>,
    private readonly options: BenchOptions,
  ) {}
  /** Whether a boolean option was given. */
  flag(name: string): boolean {
    return this.values[name] === true;
  }
  /** A string option's value, its default, or undefined. */
  get(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === 'string' ? v : this.options[name]?.default;
  }
  /** Every value of a repeatable option, in order (none: []). */
  all(name: string): string[] {
    const v = this.values[name];
    return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
  }
  /** A string option's value or its default; an error if it has neither. */
  str(name: string): string {
    const v = this.get(name);
    if (v === undefined) throw new BenchArgsError(`--${name} is required`);
    return v;
  }
  /** One of the given choices. */
  choice<T extends string>(name: string, choices: readonly T[]): T {
    const v = this.str(name);
    if (!(choices as readonly string[]).includes(v)) throw new BenchArgsError(`--${name}: expected one of ${choices.join(', ')}, got '${v}'`);
    return v as T;
  }
  /** A whole number >= min. */
  int(name: string, min = 0): number {
    return parseNumber(name, this.str(name), { integer: true, min });
  }
  /** int() of an option that has no default, or undefined when it is not given. */
  optInt(name: string, min = 0): number | undefined {
    return this.get(name) === undefined ? undefined : this.int(name, min);
  }
  /** A finite number >= min (when given). */
  num(name: string, min?: number): number {
    return parseNumber(name, this.str(name), { min });
  }
  /** A string option (or its default) read by parse(name, value); dflt when it has neither. */
  readOr<T>(name: string, parse: (flag: string, text: string) => T, dflt: T): T {
    const v = this.get(name);
    return v === undefined ? dflt : parse(name, v);
  }
  /** A comma-separated option (or its default), each item trimmed and read by parse(name, item) (empty items too); dflt when it has neither. */
  readListOr<T>(name: string, parse: (flag: string, text: string) => T, dflt: T[]): T[] {
    const v = this.get(name);
    return v === undefined ? dflt : v.split(',').map((s) => parse(name, s.trim()));
  }
  /** A comma-separated list (empty items dropped). */
  list(name: string): string[] {
    return this.str(name).split(',').filter((s) => s !== '');
  }
  /** A comma-separated list of numbers, each checked like num/int. */
  numList(name: string, opts: { integer?: boolean; min?: number } = {}): number[] {
    return this.list(name).map((s) => parseNumber(name, s, opts));
  }
}

/** Parses argv against options: 'help' when --help/-h is given; a BenchArgsError for anything not accepted. */
export function parseBenchArgs(options: BenchOptions, argv: string[]): BenchArgs | 'help' {
  const spec: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(options)) spec[name] = { type: o.type, multiple: o.multiple ?? false };
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: false }) as { values: Record<string, string | boolean | string[] | undefined> });
  } catch (e) {
    throw new BenchArgsError(e instanceof Error ? e.message : String(e));
  }
  return values.help ? 'help' : new BenchArgs(values, options);
}

/**
 * parseBenchArgs on this process's arguments, then `read` (which takes the
 * values it needs, checked): --help prints the help and exits 0; a bad
 * command line, here or in `read`, prints the error and exits 2.
 */
export function benchArgs<T>(usage: string, options: BenchOptions, read: (a: BenchArgs) => T, argv = process.argv.slice(2)): T {
  try {
    const a = parseBenchArgs(options, argv);
    if (a !== 'help') return read(a);
    console.log(helpText(usage, options));
    process.exit(0);
  } catch (e) {
    if (!(e instanceof BenchArgsError)) throw e;
    console.error(`${e.message}\n(--help lists the options)`);
    process.exit(2);
  }
}
