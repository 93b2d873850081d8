// The tdq-native command line: yargs with one module per command in
// commands/, registered from COMMANDS. A failing command prints
// "tdq-native: <message>" on stderr and exits 1 (with the stack under
// --verbose); a usage error prints the usage and the problem and exits 1.
import fs from 'node:fs';
import path from 'node:path';
import yargs, { type Argv, type CommandModule } from 'yargs';

import { editDistance } from '../config/load';
import { native, packageRoot } from '../tensor/native';
import { calibrateCommand } from './commands/calibrate';
import { convertCommand } from './commands/convert';
import { evalCommand } from './commands/eval';
import { inspectCommand } from './commands/inspect';
import { reconstructCommand } from './commands/reconstruct';
import { infoCommand } from './commands/info';
import { sampleCommand } from './commands/sample';
import { trainCommand } from './commands/train';

export interface GlobalArgs {
  threads?: number;
  verbose: boolean;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Command = CommandModule<GlobalArgs, any>;

/** Every command, in the order --help lists them. Add new modules here. */
export const COMMANDS: Command[] = [trainCommand, sampleCommand, calibrateCommand, inspectCommand, evalCommand, convertCommand, infoCommand, reconstructCommand];

/** An expected failure (bad input, missing file): reported without a stack even under --verbose. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

/** Ends a command with this exit code and nothing more to print (e.g. 130 / 143 after a signal). */
export class CliExit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
    this.name = 'CliExit';
  }
}

export function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

class UsageFailure extends Error {
  constructor(message: string, readonly usage: string) {
    super(message);
  }
}

class CommandFailure extends Error {
  constructor(readonly inner: unknown) {
    super(inner instanceof Error ? inner.message : String(inner));
  }
}

function nearest(word: string, choices: readonly string[]): string | undefined {
  const best = choices.map((c) => [c, editDistance(word, c)] as const).sort((a, b) => a[1] - b[1])[0];
  return best && best[1] <= Math.max(1, Math.floor(word.length / 3)) ? best[0] : undefined;
}

function commandName(c: Command): string {
  const spec = Array.isArray(c.command) ? c.command[0] : c.command ?? '';
  return String(spec).split(/\s+/)[0];
}

/** The yargs parser over `argv` with the given commands (not yet parsed). */
export function buildParser(argv: readonly string[], commands: readonly Command[] = COMMANDS): Argv<GlobalArgs> {
  const names = commands.map(commandName);
  let parser = yargs([...argv])
    .scriptName('tdq-native')
    .usage('$0 <command> [options]\n\nTrain, quantize (TDQ), sample and evaluate diffusion models.')
    .option('threads', {
      type: 'number',
      global: true,
      describe: 'CPU threads for the native engine (default: all cores)',
    })
    .option('verbose', { type: 'boolean', global: true, default: false, describe: 'Print stack traces of errors' })
    .check((a) => {
      if (a.threads !== undefined && (!Number.isInteger(a.threads) || (a.threads as number) < 1)) {
        return `--threads must be a positive integer, got ${String(a.threads)}`;
      }
      return true;
    }, true)
    .middleware((a) => {
      if (a.threads !== undefined) native().setThreads(a.threads as number);
    })
    .strict()
    .strictCommands()
    .demandCommand(1, 'a command is required')
    .help()
    .alias('help', 'h')
    .version(packageVersion())
    .wrap(Math.min(100, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((msg, err, y) => {
      // yargs may report one failure twice (a rejected promise goes through fail again).
      if (err instanceof CommandFailure || err instanceof UsageFailure) throw err;
      // Errors thrown by handlers and middleware; yargs' own are YErrors, and a
      // .check() that returns a message passes it as a string.
      if (err instanceof Error && err.name !== 'YError') throw new CommandFailure(err);
      let message = msg ?? (err instanceof Error ? err.message : err ? String(err) : 'invalid usage');
      const unknown = /^Unknown command: (\S+)$/.exec(message);
      if (unknown) {
        const word = unknown[1];
        // strictCommands also names a stray positional after a command "Unknown command".
        const cmdAt = argv.findIndex((a) => names.includes(a));
        if (cmdAt >= 0 && argv.indexOf(word) > cmdAt) message = `Unexpected argument: ${word}`;
        else {
          const guess = nearest(word, names);
          if (guess) message += ` (did you mean ${guess}?)`;
        }
      }
      let usage = '';
      y.showHelp((s: string) => (usage = s));
      throw new UsageFailure(message, usage);
    }) as unknown as Argv<GlobalArgs>;
  for (const c of commands) parser = parser.command(c);
  return parser;
}

function stripPrefix(message: string): string {
  return message.replace(/^tdq-native: /, '');
}

export interface MainOptions {
  /** Where error messages go (default process.stderr). */
  err?: (s: string) => void;
  /** The commands offered (default COMMANDS). */
  commands?: readonly Command[];
}

/** Runs the CLI; resolves to the exit code. */
export async function main(argv: readonly string[] = process.argv.slice(2), opts: MainOptions = {}): Promise<number> {
  const err = opts.err ?? ((s: string) => void process.stderr.write(s));
  const verbose = argv.includes('--verbose');
  try {
    await buildParser(argv, opts.commands ?? COMMANDS).parseAsync();
    return 0;
  } catch (e) {
    if (e instanceof UsageFailure) {
      err(`${e.usage}\n\ntdq-native: ${stripPrefix(e.message)}\n`);
      return 1;
    }
    const cause = e instanceof CommandFailure ? e.inner : e;
    if (cause instanceof CliExit) return cause.code;
    const error = cause instanceof Error ? cause : new Error(String(cause));
    err(`tdq-native: ${stripPrefix(error.message)}\n`);
    if (verbose && !(error instanceof CliError) && error.stack) err(`${error.stack}\n`);
    return 1;
  }
}
