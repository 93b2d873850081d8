// Load test of the example service (examples/service): autocannon drives
// POST /generate on loopback with a mix of valid and bad requests, while a
// second loop opens requests and drops them mid-generation. Resident memory
// is sampled every second from /metrics. Stops by itself after --duration s.
//   npm run bench:service [-- --duration 180 --warmup 60 --out bench/results/service-load.md]
import autocannon from 'autocannon';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { BenchArgsError, benchArgs, parseNumber } from './args';
import { lscpu } from './machine';

const USAGE = 'node dist/bench/service_load.js [--duration 180] [--warmup 60] [--connections 4] [--rate 20] [--drop-every-ms 2000] [--out bench/results/service-load.md]';
const OPTIONS = {
  duration: { type: 'string', value: 'S', default: '180', help: 'seconds of load (1..600)' },
  connections: { type: 'string', value: 'N', default: '4', help: 'concurrent autocannon connections (1..64)' },
  rate: { type: 'string', value: 'R', default: '20', help: 'requests per second over all connections (1..10000)' },
  'drop-every-ms': { type: 'string', value: 'MS', default: '2000', help: 'open a request and drop it mid-generation every MS ms (0: never; ..60000)' },
  warmup: { type: 'string', value: 'S', default: '60', help: 'seconds of memory samples left out of the growth slope (0..600)' },
  out: { type: 'string', value: 'FILE', default: path.join('bench', 'results', 'service-load.md'), help: 'report file' },
} as const;

const root = path.resolve(__dirname, '..', '..');
export const SERVER = path.join(root, 'dist', 'examples', 'service', 'server.js');

// ---- the server as a child process -------------------------------------------

export interface RunningServer {
  port: number;
  proc: ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts examples/service/server.js on a free loopback port; resolves once it listens. */
export function startServer(args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunningServer> {
  const proc = spawn(process.execPath, [SERVER, '--port', '0', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    const onData = (b: Buffer) => {
      out += b.toString();
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        proc.stdout!.off('data', onData);
        proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
        resolve({ port: Number(m[1]), proc, output: () => out, exited });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    void exited.then(({ code, signal }) => reject(new Error(`the service exited (code ${code}, signal ${signal}) before listening:\n${out}`)));
  });
}

// ---- small HTTP helpers ------------------------------------------------------------

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export function request(port: number, method: string, urlPath: string, body?: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, agent: false, headers: body === undefined ? {} : { 'Content-Type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Sample values of /metrics: name{labels} -> value. */
export function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

export async function metrics(port: number): Promise<Map<string, number>> {
  return parseMetrics((await request(port, 'GET', '/metrics')).body.toString());
}

/**
 * Opens a valid POST /generate and destroys the request after `afterMs`;
 * resolves to the status if the answer came first, else to 'dropped'.
 */
export function dropAfter(port: number, body: string, afterMs: number): Promise<number | 'dropped'> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/generate', agent: false, headers: { 'Content-Type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => {
        clearTimeout(timer);
        resolve(res.statusCode ?? 0);
      });
    });
    req.on('error', () => resolve('dropped'));
    const timer = setTimeout(() => {
      req.destroy();
      resolve('dropped');
    }, afterMs);
    req.end(body);
  });
}

// ---- the load ----------------------------------------------------------------------

/** Small valid requests (n 1-4, steps 5-10) and four kinds of bad ones, cycled by every connection. */
export const REQUEST_MIX: { label: string; body: string }[] = [
  { label: 'valid ddim n1 s5', body: '{"n":1,"steps":5}' },
  { label: 'valid dpmpp n2 s8', body: '{"n":2,"steps":8,"sampler":"dpmpp","seed":3}' },
  { label: 'bad: malformed JSON', body: '{"n": 2,' },
  { label: 'valid plms n4 s10', body: '{"n":4,"steps":10,"sampler":"plms","seed":5}' },
  { label: 'bad: n out of range', body: '{"n":100,"steps":5}' },
  { label: 'valid json n1 s10', body: '{"n":1,"steps":10,"format":"json","seed":9}' },
  { label: 'bad: unknown sampler', body: '{"n":1,"sampler":"euler"}' },
  { label: 'valid ddim n3 s6', body: '{"n":3,"steps":6,"seed":11}' },
  { label: 'bad: steps out of range', body: '{"n":1,"steps":0}' },
];

export interface LoadOptions {
  durationS: number;
  connections: number;
  /** Requests per second over all connections (autocannon's overallRate). */
  rate: number;
  /** One dropped request every this many ms (0: none). */
  dropEveryMs: number;
  /** Seconds of samples left out of the memory slope. */
  warmupS: number;
}

export interface MemorySample {
  t: number;
  rss: number;
  heap: number;
  external: number;
  live: number;
  cache: number;
  inFlight: number;
  queued: number;
}

export interface LoadResult {
  opts: LoadOptions;
  /** Answers by HTTP status, as autocannon saw them. */
  statuses: Record<string, number>;
  /** Latency percentiles in ms, over all answers and by status. */
  latency: Record<string, { count: number; p50: number; p90: number; p99: number; max: number }>;
  errors: number;
  timeouts: number;
  drops: { sent: number; dropped: number; answeredFirst: Record<string, number> };
  /** Differences of the server's counters over the run. */
  server: Record<string, number>;
  memory: MemorySample[];
  /** Least-squares slope of RSS after warm-up, and over the last half of the run, MiB per minute. */
  rssSlopeMiBPerMin: number;
  rssSlopeLastHalfMiBPerMin: number;
  scrapeFailures: number;
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0;
  for (let i = 0; i < n; ++i) (sxy += (xs[i] - mx) * (ys[i] - my)), (sxx += (xs[i] - mx) ** 2);
  return sxy / sxx;
}

// The server's counters compared before and after the run.
const SERVER_COUNTERS: Record<string, string> = {
  'generations ok': 'tdq_service_generations_total{outcome="ok"}',
  'generations cancelled': 'tdq_service_generations_total{outcome="cancelled"}',
  'generations failed (500)': 'tdq_service_generations_total{outcome="error"}',
  'cancelled while queued': 'tdq_service_cancelled_total{stage="queued"}',
  'cancelled while running': 'tdq_service_cancelled_total{stage="running"}',
  'images sent': 'tdq_service_images_total',
  'sampler steps run': 'tdq_service_sampler_steps_total',
};

/** Drives the service on 127.0.0.1:port for opts.durationS seconds. */
export async function runLoad(port: number, opts: LoadOptions): Promise<LoadResult> {
  const before = await metrics(port);
  const t0 = Date.now();
  const memory: MemorySample[] = [];
  let scrapeFailures = 0;
  const sampler = setInterval(() => {
    const t = (Date.now() - t0) / 1000;
    metrics(port).then(
      (m) => memory.push({ t, rss: m.get('process_resident_memory_bytes')!, heap: m.get('nodejs_heap_used_bytes')!, external: m.get('nodejs_external_bytes')!, live: m.get('tdq_engine_live_bytes')!, cache: m.get('tdq_engine_host_cache_bytes')!, inFlight: m.get('tdq_service_in_flight')!, queued: m.get('tdq_service_queue_length')! }),
      () => ++scrapeFailures,
    );
  }, 1000);

  // Dropped requests: one client at a time sends a valid request and destroys it
  // 200-3000 ms later (a fixed sequence). Refused (503) it retries 100 ms later,
  // as a client honouring a short Retry-After would; then it pauses dropEveryMs.
  const drops = { sent: 0, dropped: 0, answeredFirst: {} as Record<string, number> };
  const stopAt = t0 + opts.durationS * 1000;
  const dropping = (async () => {
    for (let k = 0; opts.dropEveryMs > 0 && Date.now() < stopAt; ) {
      const after = 200 + ((k * 373) % 2800);
      ++drops.sent;
      const r = await dropAfter(port, '{"n":2,"steps":10,"seed":1}', Math.min(after, Math.max(1, stopAt - Date.now())));
      if (r === 'dropped') ++drops.dropped, ++k;
      else drops.answeredFirst[r] = (drops.answeredFirst[r] ?? 0) + 1;
      await new Promise((res) => setTimeout(res, r === 503 ? 100 : opts.dropEveryMs));
    }
  })();

  const times: Record<string, number[]> = { all: [] };
  let instance!: autocannon.Instance;
  const done = new Promise<autocannon.Result>((resolve, reject) => {
    instance = autocannon({
    url: `http://127.0.0.1:${port}`,
    connections: opts.connections,
    overallRate: opts.rate,
    duration: opts.durationS,
    timeout: 60,
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    requests: REQUEST_MIX.map((r) => ({ method: 'POST' as const, path: '/generate', body: r.body })),
    }, (err, res) => (err ? reject(err) : resolve(res)));
  });
  instance.on('response', (_c: unknown, status: number, _bytes: number, ms: number) => {
    (times[status] ??= []).push(ms);
    times.all.push(ms);
  });
  const result = await done;
  await dropping;
  clearInterval(sampler);
  // Let the server notice the connections autocannon dropped at the end.
  await new Promise((r) => setTimeout(r, 500));
  const after = await metrics(port);

  const latency: LoadResult['latency'] = {};
  for (const [key, list] of Object.entries(times)) {
    const s = list.sort((a, b) => a - b);
    latency[key] = { count: s.length, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN };
  }
  const statuses: Record<string, number> = {};
  for (const [code, v] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = v.count ?? 0;
  const server: Record<string, number> = {};
  for (const [label, key] of Object.entries(SERVER_COUNTERS)) server[label] = (after.get(key) ?? 0) - (before.get(key) ?? 0);
  const steady = memory.filter((s) => s.t >= opts.warmupS);
  const lastHalf = memory.filter((s) => s.t >= opts.durationS / 2);
  return {
    rssSlopeLastHalfMiBPerMin: slope(lastHalf.map((s) => s.t / 60), lastHalf.map((s) => s.rss / 2 ** 20)),
    opts, statuses, latency, errors: result.errors, timeouts: result.timeouts, drops, server, memory, scrapeFailures,
    rssSlopeMiBPerMin: slope(steady.map((s) => s.t / 60), steady.map((s) => s.rss / 2 ** 20)),
  };
}

// ---- the report --------------------------------------------------------------------

function uptime(): string {
  try {
    return execFileSync('uptime', { encoding: 'utf8' }).trim();
  } catch {
    return `load average ${os.loadavg().map((l) => l.toFixed(2)).join(', ')}`;
  }
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(x >= 100 ? 0 : 1) : '–');

function report(r: LoadResult, meta: { command: string; serverArgs: string[]; uptimeBefore: string; uptimeAfter: string; exit: string; date: string }): string {
  const L: string[] = [];
  const o = r.opts;
  L.push('# Load test of the example service (examples/service)', '');
  L.push(`- command: \`${meta.command}\``);
  L.push(`- date: ${meta.date}; machine: ${lscpu('Model name')}, ${os.cpus().length} CPUs (${lscpu('Core(s) per socket')} core(s) per socket, ${lscpu('Thread(s) per core')} thread(s) per core), ${mib(os.totalmem())} MiB RAM`);
  L.push(`- load before: \`${meta.uptimeBefore}\``, `- load after: \`${meta.uptimeAfter}\``);
  L.push(`- server: \`node dist/examples/service/server.js --port 0 ${meta.serverArgs.join(' ')}\` (the shipped model, 1x32x32), on 127.0.0.1`);
  L.push(`- load: autocannon, ${o.connections} connections, ${o.rate} requests/s in all, ${o.durationS} s, cycling ${REQUEST_MIX.length} bodies: ${REQUEST_MIX.map((m) => m.label).join('; ')}`);
  L.push(`- disconnects: one more client sends a valid request (n 2, steps 10) and destroys it 200-3000 ms later (a fixed sequence); refused with 503 it retries after 100 ms, else it pauses ${o.dropEveryMs} ms`);
  L.push(`- shutdown: SIGTERM after the run; the server ${meta.exit}`, '');
  L.push('## Answers', '', '| status | count |', '|---|---:|');
  for (const [code, n] of Object.entries(r.statuses).sort()) L.push(`| ${code} | ${n} |`);
  L.push(`| connection errors | ${r.errors} |`, `| timeouts | ${r.timeouts} |`, '');
  L.push('## Latency (ms, as autocannon saw it)', '', '| answers | count | p50 | p90 | p99 | max |', '|---|---:|---:|---:|---:|---:|');
  for (const [k, v] of Object.entries(r.latency).sort(([a], [b]) => (a === 'all' ? -1 : b === 'all' ? 1 : a.localeCompare(b))))
    L.push(`| ${k === 'all' ? 'all' : `status ${k}`} | ${v.count} | ${ms(v.p50)} | ${ms(v.p90)} | ${ms(v.p99)} | ${ms(v.max)} |`);
  L.push('', '## Disconnects and the server\'s counters', '');
  L.push(`- disconnecting client: ${r.drops.sent} requests sent, ${r.drops.dropped} destroyed before an answer, answered first (by status): ${JSON.stringify(r.drops.answeredFirst)}`);
  L.push(`- server counters over the run (from /metrics): ${Object.entries(r.server).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  L.push(`- /metrics scrapes that failed: ${r.scrapeFailures}`, '');
  const m = r.memory;
  const steady = m.filter((s) => s.t >= o.warmupS);
  L.push('## Resident memory', '');
  if (steady.length >= 2) {
    const a = steady[0], b = steady[steady.length - 1];
    L.push(`After a ${o.warmupS} s warm-up: RSS ${mib(a.rss)} MiB at ${a.t.toFixed(0)} s, ${mib(b.rss)} MiB at ${b.t.toFixed(0)} s; least-squares slope ${r.rssSlopeMiBPerMin.toFixed(2)} MiB/min over ${steady.length} samples; over the last half of the run (from ${(o.durationS / 2).toFixed(0)} s) ${r.rssSlopeLastHalfMiBPerMin.toFixed(2)} MiB/min.`);
    L.push(`RSS range after warm-up: ${mib(Math.min(...steady.map((s) => s.rss)))}-${mib(Math.max(...steady.map((s) => s.rss)))} MiB; engine live bytes ${mib(Math.min(...steady.map((s) => s.live)))}-${mib(Math.max(...steady.map((s) => s.live)))} MiB; host cache ${mib(Math.min(...steady.map((s) => s.cache)))}-${mib(Math.max(...steady.map((s) => s.cache)))} MiB.`);
  }
  L.push('', 'Every 5th sample (one a second):', '', '| t (s) | RSS MiB | V8 heap MiB | external MiB | engine live MiB | host cache MiB | in flight | queued |', '|---:|---:|---:|---:|---:|---:|---:|---:|');
  m.forEach((s, i) => {
    if (i % 5 === 0 || i === m.length - 1) L.push(`| ${s.t.toFixed(0)} | ${mib(s.rss)} | ${mib(s.heap)} | ${mib(s.external)} | ${mib(s.live)} | ${mib(s.cache)} | ${s.inFlight} | ${s.queued} |`);
  });
  return L.join('\n') + '\n';
}

async function main(): Promise<void> {
  const { outFile, ...opts }: LoadOptions & { outFile: string } = benchArgs(USAGE, OPTIONS, (a) => {
    const within = (name: string, lo: number, hi: number, integer = false) => {
      const v = parseNumber(name, a.str(name), { integer, min: lo });
      if (v > hi) throw new BenchArgsError(`--${name}: expected at most ${hi}, got '${a.str(name)}'`);
      return v;
    };
    return { durationS: within('duration', 1, 600), connections: within('connections', 1, 64, true), rate: within('rate', 1, 10_000), dropEveryMs: within('drop-every-ms', 0, 60_000), warmupS: within('warmup', 0, 600), outFile: path.resolve(a.str('out')) };
  });
  const serverArgs = ['--max-n', '4', '--max-steps', '10', '--concurrency', '1', '--max-queue', '3'];
  const uptimeBefore = uptime();
  const server = await startServer(serverArgs);
  let exit = 'did not exit';
  let result: LoadResult;
  try {
    result = await runLoad(server.port, opts);
    const health = await request(server.port, 'GET', '/health');
    if (health.status !== 200) throw new Error(`/health answered ${health.status} after the run: ${health.body}`);
  } finally {
    server.proc.kill('SIGTERM');
    const e = await Promise.race([server.exited, new Promise<null>((r) => setTimeout(() => r(null), 30_000))]);
    if (e) exit = `exited with code ${e.code}${e.signal ? ` (signal ${e.signal})` : ''}`;
    else server.proc.kill('SIGKILL');
  }
  const text = report(result, {
    command: `node dist/bench/service_load.js ${process.argv.slice(2).join(' ')}`.trim(),
    serverArgs, uptimeBefore, uptimeAfter: uptime(), exit, date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
  });
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, text);
  process.stdout.write(text);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`service_load: ${(e as Error).stack ?? e}`);
    process.exit(1);
  });
}
