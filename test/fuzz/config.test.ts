// Fuzzing config parsing (YAML text -> validated Config): byte mutations of
// the shipped configs, structural edits (deep nesting, huge numbers, alias
// bombs, odd keys) and random --set overrides. The only outcomes allowed are
// a config or a ConfigError naming the file, in bounded time and memory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';

import { ConfigError, parseConfig } from '../../src/config/load';
import { type Outcome, cleanOutcome, corpusFiles, fc, fuzz, mutatedArb } from './helpers';

const CONFIGS = path.resolve(__dirname, '..', '..', '..', 'configs');
const seedFiles = [...fs.readdirSync(CONFIGS).filter((n) => n.endsWith('.yaml')).map((n) => path.join(CONFIGS, n)), ...corpusFiles('config')];
const seedTexts = seedFiles.map((f) => fs.readFileSync(f, 'utf8'));
const FILE = 'fuzz/config.yaml';

const PROTO_NAMES = Object.getOwnPropertyNames(Object.prototype).sort();

async function parse(text: string, overrides?: string[]): Promise<Outcome> {
  const o = await cleanOutcome(() => parseConfig(text, FILE, { overrides }), [FILE], `config ${JSON.stringify(text.slice(0, 80))} ${JSON.stringify(overrides ?? [])}`);
  if (!o.ok) assert.ok(o.error instanceof ConfigError, `not a ConfigError: ${o.error.name}: ${o.error.message}`);
  assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), PROTO_NAMES, `Object.prototype was changed by ${JSON.stringify(overrides)}`);
  return o;
}

const scalar = fc.oneof(
  fc.constantFrom('1e400', '-1e400', '.nan', '.inf', '99999999999999999999999', '0x7fffffff', '-0', '~', 'null', '!!binary AAAA', '"\\u0000"', '&a 1', '*a', '!!js/function x', '<<: *a'),
  fc.integer().map(String),
  fc.double().map(String),
  fc.string({ maxLength: 8 }).map((s) => JSON.stringify(s)),
);

/** Structural edits on the text: a value replaced, deep nesting, an alias bomb, an odd key. */
const edit = fc.oneof(
  fc.record({ kind: fc.constant('value' as const), line: fc.nat(), v: scalar }),
  fc.record({ kind: fc.constant('nest' as const), line: fc.nat(), depth: fc.integer({ min: 10, max: 100_000 }), flow: fc.boolean() }),
  fc.record({ kind: fc.constant('bomb' as const), levels: fc.integer({ min: 2, max: 12 }) }),
  fc.record({ kind: fc.constant('key' as const), line: fc.nat(), k: fc.constantFrom('__proto__', 'constructor', 'prototype', '<<', '? [a]', '""', "''", 'toString') }),
);

type Edit = typeof edit extends fc.Arbitrary<infer T> ? T : never;

function applyEdit(text: string, e: Edit): string {
  const lines = text.split('\n');
  const at = ('line' in e ? e.line : 0) % Math.max(lines.length, 1);
  switch (e.kind) {
    case 'value': {
      const m = /^(\s*[^#:\s][^:]*:)\s*(.*)$/.exec(lines[at]);
      if (m) lines[at] = `${m[1]} ${e.v}`;
      break;
    }
    case 'nest': {
      const m = /^(\s*[^#:\s][^:]*:)/.exec(lines[at]);
      const deep = e.flow ? '['.repeat(e.depth) + ']'.repeat(e.depth) : '- '.repeat(Math.min(e.depth, 5000)) + '1';
      if (m) lines[at] = `${m[1]} ${deep}`;
      break;
    }
    case 'bomb': {
      // Billion laughs: each level refers to the previous one ten times.
      const out = ['l0: &l0 [x, x, x, x, x, x, x, x, x, x]'];
      for (let i = 1; i < e.levels; ++i) out.push(`l${i}: &l${i} [${Array(10).fill(`*l${i - 1}`).join(', ')}]`);
      lines.push(...out);
      break;
    }
    case 'key': {
      const m = /^(\s*)[^#:\s][^:]*:(.*)$/.exec(lines[at]);
      if (m) lines[at] = `${m[1]}${e.k}:${m[2]}`;
      break;
    }
  }
  return lines.join('\n');
}

const overrideArb = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.tuple(fc.constantFrom('training.max_steps', 'model.params.unet_config.params.channel_mult[1]', 'data.params', '__proto__.x', 'a..b', 'x[99999999]', 'training.lr[3]'), fc.oneof(scalar, fc.string({ maxLength: 10 })))
    .map(([k, v]) => `${k}=${v}`),
);

describe('config parsing under fuzzing', () => {
  it('mutated bytes of the shipped configs: a config or a ConfigError naming the file', async () => {
    const seeds = seedTexts.map((t) => new Uint8Array(Buffer.from(t, 'utf8')));
    const s = await fuzz(mutatedArb(seeds, 0), (b) => parse(Buffer.from(b).toString('utf8')), { ms: 1500 });
    assert.ok(s.errors > 0, JSON.stringify(s));
  });

  it('structural edits: deep nesting, alias bombs, huge numbers, odd keys', async () => {
    await fuzz(fc.tuple(fc.nat({ max: seedTexts.length - 1 }), fc.array(edit, { minLength: 1, maxLength: 3 })), ([i, edits]) => {
      let text = seedTexts[i];
      for (const e of edits) text = applyEdit(text, e);
      return parse(text);
    }, { ms: 1500 });
  });

  it('random --set overrides', async () => {
    await fuzz(fc.array(overrideArb, { minLength: 1, maxLength: 3 }), (ov) => parse(seedTexts[0], ov), { ms: 1500 });
  });

  it('replays the kept corpus', async () => {
    const files = corpusFiles('config');
    assert.ok(files.length > 0);
    for (const f of files) await parse(fs.readFileSync(f, 'utf8'));
  });

  it('regressions the fuzzer found: unresolved aliases and alias bombs are ConfigErrors naming the file', () => {
    for (const [text, re] of [
      ['*\0', /fuzz\/config\.yaml: YAML error: Unresolved alias/],
      ['a: *nope\n', /fuzz\/config\.yaml: YAML error: Unresolved alias/],
      [applyEdit(seedTexts[0], { kind: 'bomb', levels: 3 }), /fuzz\/config\.yaml: YAML error: Excessive alias count/],
      // Deep nesting is refused before the parser recurses into it (the parser took seconds, then overflowed the stack).
      [`a: ${'['.repeat(5000)}${']'.repeat(5000)}\n`, /fuzz\/config\.yaml:1:68: nested deeper than 64 levels of \[ \] or \{ \}/],
      [`x'y a: ${'['.repeat(5000)}${']'.repeat(5000)}\n`, /nested deeper than 64 levels/],
      [`a:\n${Array.from({ length: 300 }, (_, i) => `${' '.repeat(i + 1)}k:`).join('\n')} 1\n`, /indented or nested deeper than 256 columns/],
      [`a: ${'- '.repeat(5000)}1\n`, /nested deeper than 64 levels of block sequences/],
    ] as const) {
      assert.throws(() => parseConfig(text, FILE), (e: Error) => e instanceof ConfigError && re.test(e.message));
    }
  });

  it('regression: --set __proto__.x=1 is refused and leaves Object.prototype alone', () => {
    for (const ov of ['__proto__.polluted=1', 'model.__proto__.polluted=1', 'constructor.prototype.polluted=1']) {
      assert.throws(() => parseConfig(seedTexts[0], FILE, { overrides: [ov] }), (e: Error) =>
        e instanceof ConfigError && /is not allowed in a config path/.test(e.message) && e.message.includes(FILE));
      assert.equal(({} as Record<string, unknown>).polluted, undefined, ov);
    }
  });
});
