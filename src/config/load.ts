// Reading a config: YAML parsing, --set overrides, schema validation, and
// error messages that name the file, the line and the key path, e.g.
//   configs/x.yaml:21:24: model.params.unet_config.params.channel_mult[1]: expected number, got string "two"
import fs from 'node:fs';
import YAML, { isMap, isPair, isScalar, isSeq, LineCounter, type Node as YamlNode } from 'yaml';
import { z } from 'zod';

import { type Config, ConfigSchema, DataConfigSchema, TrainingConfigSchema, UNSUPPORTED_KEYS } from './schema';
import { fromUpstream } from './upstream';

export type ConfigPath = (string | number)[];

export interface ConfigIssue {
  path: ConfigPath;
  message: string;
  /** 1-based position in the file, when the key is there. */
  line?: number;
  col?: number;
  /** The --set override that produced the value, when one did. */
  override?: string;
}

export class ConfigError extends Error {
  readonly file: string;
  readonly issues: ConfigIssue[];

  constructor(file: string, issues: ConfigIssue[]) {
    super(issues.map((i) => formatIssue(file, i)).join('\n'));
    this.name = 'ConfigError';
    this.file = file;
    this.issues = issues;
  }
}

export interface LoadedConfig {
  config: Config;
  /** The parsed YAML after overrides, before defaults. */
  raw: unknown;
  file: string;
  /** Things that loaded but are ignored (e.g. a lightning section). */
  warnings: string[];
}

export interface LoadOptions {
  /** "key.path=value" overrides; the value is parsed as YAML ("3", "[1,2]", "true"). */
  overrides?: readonly string[];
  /** 'train' (default) needs every section; 'model' (sampling, converting) only the model section. */
  purpose?: 'train' | 'model';
}

/** How parseWith reads a file besides its schema. */
interface ReadOptions extends LoadOptions {
  /** Map upstream's data / scheduler / Lightning places onto data and training first (default true). */
  upstream?: boolean;
}

/** `a.b[1].c` */
export function formatPath(p: ConfigPath): string {
  let s = '';
  for (const k of p) s += typeof k === 'number' ? `[${k}]` : s ? `.${k}` : k;
  return s || '(top level)';
}

function formatIssue(file: string, i: ConfigIssue): string {
  const where = i.line !== undefined ? `${file}:${i.line}:${i.col}` : file;
  const key = i.path.length ? `${formatPath(i.path)}: ` : '';
  return `${where}: ${key}${i.message}${i.override ? ` (from --set ${i.override})` : ''}`;
}

/** Parses "a.b[2].c" into ['a', 'b', 2, 'c']. */
export function parsePath(s: string): ConfigPath {
  if (!/^[^.[\]]+(?:\.[^.[\]]+|\[\d+\])*$/.test(s)) throw new Error(`bad config key path '${s}' (expected e.g. training.max_steps or model.params.unet_config.params.channel_mult[1])`);
  const out: ConfigPath = [];
  for (const m of s.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[1] !== undefined ? m[1] : Number(m[2]));
  return out;
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer ${v}` : `number ${v}`;
  return `${typeof v} ${String(v)}`;
}

function getAt(root: unknown, p: ConfigPath): unknown {
  let v = root;
  for (const k of p) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[k];
  }
  return v;
}

/** Levenshtein distance, for "did you mean" hints (config keys here, CLI commands in src/cli). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; ++i) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; ++j) {
      const t = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = t;
    }
  }
  return d[b.length];
}

// The keys the strict object at `p` accepts, for "did you mean" hints: found by
// walking the schema definitions along the path (a discriminated union picks
// the option whose target the data names).
function knownKeys(schema: z.ZodType, p: ConfigPath, root: unknown): string[] {
  let s: z.ZodType | undefined = schema;
  const unwrap = (x: z.ZodType): z.ZodType => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    let t: any = x;
    for (;;) {
      const def = t?._zod?.def;
      if (!def) return t;
      if (def.type === 'optional' || def.type === 'default' || def.type === 'prefault' || def.type === 'nullable') t = def.innerType;
      else if (def.type === 'pipe') t = def.in;
      else return t;
    }
  };
  for (let i = 0; i <= p.length; ++i) {
    if (!s) return [];
    s = unwrap(s);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const def: any = (s as any)._zod.def;
    if (def.type === 'union') {
      // A discriminated union: pick the option whose literal matches the data.
      const here = getAt(root, p.slice(0, i)) as Record<string, unknown> | undefined;
      const disc: string | undefined = def.discriminator;
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const match = def.options.find((o: any) => {
        const f = unwrap(o._zod.def.shape?.[disc ?? '']);
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        const vals: unknown[] = (f as any)?._zod?.def?.values ?? [];
        return here && vals.includes(here[disc ?? '']);
      });
      if (!match) return [];
      s = unwrap(match);
    }
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const d2: any = (s as any)._zod.def;
    if (i === p.length) return d2.type === 'object' ? Object.keys(d2.shape) : [];
    const k = p[i];
    if (d2.type === 'object') s = d2.shape[k as string];
    else if (d2.type === 'array') s = d2.element;
    else return [];
  }
  return [];
}

function issueMessage(issue: z.core.$ZodIssue, value: unknown): string {
  switch (issue.code) {
    case 'invalid_type':
      if (value === undefined) return `required (${issue.expected === 'int' ? 'an integer' : issue.expected})`;
      return `expected ${issue.expected === 'int' ? 'integer' : issue.expected}, got ${describe(value)}`;
    case 'invalid_value':
      if (value === undefined) return `required (one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')})`;
      return issue.values.length === 1
        ? `expected ${JSON.stringify(issue.values[0])}, got ${describe(value)}`
        : `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}, got ${describe(value)}`;
    case 'invalid_union': {
      const opts = (issue as unknown as { options?: unknown[] }).options;
      if (opts) {
        if (value === undefined) return `required (one of ${opts.map((v) => JSON.stringify(v)).join(', ')})`;
        return `unknown ${String(issue.path[issue.path.length - 1] ?? 'value')} ${JSON.stringify(value)}; expected one of ${opts.map((v) => JSON.stringify(v)).join(', ')}`;
      }
      return `${issue.message}, got ${describe(value)}`;
    }
    case 'too_small': {
      const op = issue.inclusive ? '>=' : '>';
      if (issue.origin === 'array') return `expected at least ${issue.minimum} item${Number(issue.minimum) === 1 ? '' : 's'}, got ${Array.isArray(value) ? value.length : 0}`;
      if (issue.origin === 'string') return 'must not be empty';
      return `must be ${op} ${issue.minimum}, got ${describe(value)}`;
    }
    case 'too_big': {
      const op = issue.inclusive ? '<=' : '<';
      if (issue.origin === 'array') return `expected at most ${issue.maximum} items, got ${Array.isArray(value) ? value.length : 0}`;
      return `must be ${op} ${issue.maximum}, got ${describe(value)}`;
    }
    default:
      return issue.message;
  }
}

/** Turns zod issues into config issues with readable messages (no positions yet). */
export function explainIssues(issues: readonly z.core.$ZodIssue[], raw: unknown): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of issues) {
    const p = issue.path.filter((k): k is string | number => typeof k !== 'symbol');
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeys(ConfigSchema, p, raw);
      for (const key of issue.keys) {
        let msg = 'unknown key';
        // Own keys only: '__proto__' or 'constructor' must not find Object.prototype's.
        if (Object.prototype.hasOwnProperty.call(UNSUPPORTED_KEYS, key)) msg += `: ${UNSUPPORTED_KEYS[key]}`;
        else {
          const best = known.map((k) => [k, editDistance(key, k)] as const).sort((a, b) => a[1] - b[1])[0];
          if (best && best[1] <= Math.max(2, Math.floor(key.length / 3))) msg += ` (did you mean ${best[0]}?)`;
          else if (known.length) msg += ` (expected one of ${known.join(', ')})`;
        }
        out.push({ path: [...p, key], message: msg });
      }
      continue;
    }
    out.push({ path: p, message: issueMessage(issue, getAt(raw, p)) });
  }
  return out;
}

/** The 1-based line and column of the key (or value) at `p`; the nearest existing ancestor otherwise. */
function locate(doc: YAML.Document, lc: LineCounter, p: ConfigPath): { line: number; col: number } | undefined {
  let node: unknown = doc.contents;
  let pos: number | undefined = (node as YamlNode | null)?.range?.[0];
  for (const k of p) {
    if (isMap(node)) {
      const pair = node.items.find((it) => isPair(it) && isScalar(it.key) && String(it.key.value) === String(k));
      if (!pair) break;
      pos = (pair.key as YamlNode).range?.[0] ?? pos;
      node = pair.value;
    } else if (isSeq(node) && typeof k === 'number' && k < node.items.length) {
      node = node.items[k];
      pos = (node as YamlNode | null)?.range?.[0] ?? pos;
    } else break;
  }
  if (pos === undefined) return undefined;
  const lp = lc.linePos(pos);
  return { line: lp.line, col: lp.col };
}

/** Keys an override may not set: they would reach Object.prototype instead of the config. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

function setAt(root: Record<string, unknown>, p: ConfigPath, value: unknown, spec: string): void {
  const bad = p.find((k) => typeof k === 'string' && FORBIDDEN_KEYS.has(k));
  if (bad !== undefined) throw new Error(`--set ${spec}: the key '${bad}' is not allowed in a config path`);
  const own = (o: object, k: string | number) => Object.prototype.hasOwnProperty.call(o, k);
  let v: Record<string | number, unknown> = root;
  for (let i = 0; i < p.length - 1; ++i) {
    const k = p[i];
    let next = own(v, k) ? v[k] : undefined;
    if (next === undefined || next === null) {
      next = typeof p[i + 1] === 'number' ? [] : {};
      v[k] = next;
    }
    if (typeof next !== 'object') throw new Error(`--set ${spec}: ${formatPath(p.slice(0, i + 1))} is ${describe(next)}, not a mapping or list`);
    v = next as Record<string | number, unknown>;
  }
  v[p[p.length - 1]] = value;
}

function startsWith(p: ConfigPath, prefix: ConfigPath): boolean {
  return prefix.length <= p.length && prefix.every((k, i) => String(p[i]) === String(k));
}

/** Deepest flow nesting ([ and {) and widest indentation a config may have; real ones need under 10 levels. */
export const MAX_CONFIG_NESTING = 64;
export const MAX_CONFIG_INDENT = 256;

/**
 * Refuses absurdly deep nesting before the YAML parser sees it: the parser
 * recurses per level, so thousands of levels cost seconds and can overflow
 * the stack. A rough scan (quotes and comments skipped) that only has to
 * bound the depth, not parse.
 */
function checkNesting(text: string, file: string): void {
  let depth = 0, line = 1, col = 0, lineStart = true, indent = 0;
  let quote: string | null = null;
  let dashes = 0; // consecutive '- ' on this line
  const fail = (msg: string) => new ConfigError(file, [{ path: [], message: msg, line, col }]);
  for (let i = 0; i < text.length; ++i) {
    const ch = text[i];
    col += 1;
    if (ch === '\n') {
      line += 1;
      col = 0;
      lineStart = true;
      indent = 0;
      dashes = 0;
      if (quote === "'") quote = null; // unterminated: the parser reports it
      continue;
    }
    if (lineStart) {
      if (ch === ' ' || ch === '-' || ch === '\t') {
        if (++indent > MAX_CONFIG_INDENT) throw fail(`indented or nested deeper than ${MAX_CONFIG_INDENT} columns`);
        continue;
      }
      lineStart = false;
    }
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === '\\' && quote === '"') i += 1;
      continue;
    }
    if (ch === '-' && text[i + 1] === ' ') {
      if (++dashes > MAX_CONFIG_NESTING) throw fail(`nested deeper than ${MAX_CONFIG_NESTING} levels of block sequences ('- - - ...')`);
      i += 1;
      col += 1;
      continue;
    }
    if (ch !== ' ') dashes = 0;
    // A quote opens a quoted scalar only where a scalar can start (in YAML, "don't" is plain).
    if ((ch === '"' || ch === "'") && (i === 0 || /[\s[{,:]/.test(text[i - 1]))) quote = ch;
    else if (ch === '#' && (i === 0 || /\s/.test(text[i - 1]))) {
      while (i + 1 < text.length && text[i + 1] !== '\n') i += 1;
    } else if (ch === '[' || ch === '{') {
      if (++depth > MAX_CONFIG_NESTING) throw fail(`nested deeper than ${MAX_CONFIG_NESTING} levels of [ ] or { }`);
    } else if ((ch === ']' || ch === '}') && depth > 0) depth -= 1;
  }
}

function yamlFailure(file: string, e: unknown): ConfigError {
  const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
  return new ConfigError(file, [{ path: [], message: /call stack/i.test(msg) ? 'YAML error: nested too deeply to parse' : `YAML error: ${msg}` }]);
}

/** Parses and validates config text; `file` is only for messages. */
export function parseConfig(text: string, file: string, opts: LoadOptions = {}): LoadedConfig {
  const { data, raw, warnings } = parseWith(ConfigSchema, text, file, opts);
  const ignored = ignoredKeys(raw);
  if (ignored.length) warnings.push(`${file}: accepted for CompVis configs but ignored: ${ignored.join(', ')}`);
  return { config: data, raw, file, warnings };
}

/**
 * A training config whose model section has a schema of its own (an upstream
 * LatentDiffusion: src/config/latent_schema.ts; an autoencoder, read by its
 * own reader: unknown): the model validated by `modelSchema`, the data and
 * training sections as parseConfig's, with the same YAML parsing, --set
 * overrides, upstream mapping (lightning.trainer, scheduler_config,
 * DataModuleFromConfig) and messages naming file:line and key path. `raw` is
 * the whole file after overrides and the upstream mapping.
 */
export interface TrainSections<M = unknown> {
  model: M;
  data: Config['data'];
  training: Config['training'];
  raw: Record<string, unknown>;
  file: string;
  warnings: string[];
}

const trainSectionsSchema = <M extends z.ZodType>(model: M) =>
  z.strictObject({
    model,
    data: DataConfigSchema,
    training: TrainingConfigSchema,
    lightning: z.record(z.string(), z.unknown()).optional(),
  });

export function parseTrainSections<M extends z.ZodType = z.ZodUnknown>(text: string, file: string, opts: LoadOptions = {}, modelSchema?: M): TrainSections<z.output<M>> {
  const { data, raw, warnings } = parseWith(trainSectionsSchema(modelSchema ?? z.unknown()), text, file, { ...opts, purpose: 'train' });
  return { model: (data as { model: z.output<M> }).model, data: data.data, training: data.training, raw: raw as Record<string, unknown>, file, warnings };
}

/** Reads a file for parseTrainSections. */
export function loadTrainSections<M extends z.ZodType = z.ZodUnknown>(file: string, opts: LoadOptions = {}, modelSchema?: M): TrainSections<z.output<M>> {
  return parseTrainSections(readConfigText(file), file, opts, modelSchema);
}

/**
 * Reads a file whose whole content `schema` validates, as it stands (no
 * upstream mapping, no overrides): the model of an LDM file for sampling,
 * where its other sections are not read. Errors name file:line and key path.
 */
export function loadWithSchema<S extends z.ZodType>(schema: S, file: string): z.output<S> {
  return parseWith(schema, readConfigText(file), file, { upstream: false }).data;
}

/** Validates an already parsed object with `schema` (no positions: there is no text); errors name `file` and the key path. */
export function validateWithSchema<S extends z.ZodType>(schema: S, raw: unknown, file: string): z.output<S> {
  const r = schema.safeParse(raw);
  if (!r.success) throw new ConfigError(file, explainIssues(r.error.issues, raw));
  return r.data;
}

function parseWith<S extends z.ZodType>(schema: S, text: string, file: string, opts: ReadOptions): { data: z.output<S>; raw: unknown; warnings: string[] } {
  checkNesting(text, file);
  const lc = new LineCounter();
  let doc: YAML.Document;
  try {
    doc = YAML.parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  } catch (e) {
    throw yamlFailure(file, e);
  }
  if (doc.errors.length) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => {
        const lp = lc.linePos(e.pos[0]);
        return { path: [], message: `YAML syntax error: ${e.message.split('\n')[0]}`, line: lp.line, col: lp.col };
      }),
    );
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    // Unresolved aliases, alias bombs ("excessive alias count"), and the like.
    throw yamlFailure(file, e);
  }
  if (raw === null || raw === undefined) throw new ConfigError(file, [{ path: [], message: 'the file is empty' }]);
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(file, [{ path: [], message: `expected a mapping at the top level, got ${describe(raw)}` }]);

  const overridden: { path: ConfigPath; spec: string }[] = [];
  for (const spec of opts.overrides ?? []) {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new ConfigError(file, [{ path: [], message: `bad override '${spec}': expected key.path=value` }]);
    let p: ConfigPath;
    try {
      p = parsePath(spec.slice(0, eq).trim());
    } catch (e) {
      throw new ConfigError(file, [{ path: [], message: `bad override '${spec}': ${(e as Error).message}` }]);
    }
    let value: unknown;
    try {
      value = YAML.parse(spec.slice(eq + 1));
    } catch (e) {
      throw new ConfigError(file, [{ path: p, message: `bad override value: ${(e as Error).message.split('\n')[0]}`, override: spec }]);
    }
    raw = structuredClone(raw);
    try {
      setAt(raw as Record<string, unknown>, p, value, spec);
    } catch (e) {
      throw new ConfigError(file, [{ path: [], message: (e as Error).message }]);
    }
    overridden.push({ path: p, spec });
  }

  const up = opts.upstream === false ? { raw: raw as Record<string, unknown>, notes: [], issues: [] } : fromUpstream(raw as Record<string, unknown>, opts.purpose ?? 'train');
  if (up.issues.length) throw new ConfigError(file, up.issues.map((i) => ({ ...i, ...locate(doc, lc, i.path) })));
  const hadLightning = (raw as Record<string, unknown>).lightning !== undefined;
  raw = up.raw;
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issues = explainIssues(r.error.issues, raw).map((i) => {
      const ov = [...overridden].reverse().find((o) => startsWith(i.path, o.path));
      if (ov) return { ...i, override: ov.spec };
      return { ...i, ...locate(doc, lc, i.path) };
    });
    throw new ConfigError(file, issues);
  }
  const warnings: string[] = [];
  if (up.notes.length) warnings.push(`${file}: upstream sections: ${up.notes.join('; ')}`);
  else if (hadLightning) warnings.push(`${file}: the lightning section is ignored; training options go in the training section`);
  return { data: r.data as z.output<S>, raw, warnings };
}

/**
 * Keys that CompVis configs carry and the schema accepts, but that change
 * nothing here (logging, Lightning, gradient checkpointing, options whose only
 * accepted value is upstream's default). Listed in one warning when present.
 * (A LatentDiffusion's are refused by the schema: see LatentDiffusionParamsSchema.)
 */
const IGNORED_KEYS: readonly string[] = [
  'model.params.monitor',
  'model.params.log_every_t',
  'model.params.first_stage_key',
  'model.params.unet_config.params.use_checkpoint',
];

function ignoredKeys(raw: unknown): string[] {
  return IGNORED_KEYS.filter((k) => {
    let v: unknown = raw;
    for (const part of k.split('.')) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
      v = (v as Record<string, unknown>)[part];
    }
    return v !== undefined;
  });
}

/** Reads, parses and validates a config file. */
export function loadConfig(file: string, opts: LoadOptions = {}): LoadedConfig {
  return parseConfig(readConfigText(file), file, opts);
}

function readConfigText(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError(file, [{ path: [], message: err.code === 'ENOENT' ? 'config file not found' : `cannot read the config: ${err.message}` }]);
  }
  return text;
}
