// An example HTTP service over tdq-native: POST /generate returns PNGs,
// GET /health and GET /metrics (Prometheus) report on it. Plain node:http,
// 127.0.0.1 only. See examples/README.md.
//   node dist/examples/service/server.js [--port 8080] [--max-n 4] ...
import { parseArgs } from 'node:util';

import { DEFAULT_MODEL, loadPipeline } from '../../src';
import { DEFAULT_OPTIONS, Service, type ServiceOptions } from './app';

const FLAGS = {
  port: { env: 'PORT', dflt: 8080, min: 0, max: 65535, help: 'TCP port on 127.0.0.1 (0: any free one)' },
  'max-n': { key: 'maxN', dflt: DEFAULT_OPTIONS.maxN, min: 1, max: 64, help: 'images per request' },
  'max-steps': { key: 'maxSteps', dflt: DEFAULT_OPTIONS.maxSteps, min: 1, max: 1000, help: 'sampler steps per request' },
  'max-body-bytes': { key: 'maxBodyBytes', dflt: DEFAULT_OPTIONS.maxBodyBytes, min: 64, max: 1 << 20, help: 'request body size' },
  concurrency: { key: 'concurrency', dflt: DEFAULT_OPTIONS.concurrency, min: 1, max: 64, help: 'generations at once' },
  'max-queue': { key: 'maxQueue', dflt: DEFAULT_OPTIONS.maxQueue, min: 0, max: 10_000, help: 'requests waiting before 503' },
  'shutdown-grace-ms': { key: 'shutdownGraceMs', dflt: DEFAULT_OPTIONS.shutdownGraceMs, min: 0, max: 600_000, help: 'time in-flight work may finish on SIGTERM' },
} as const;

function usage(): string {
  const lines = Object.entries(FLAGS).map(([k, f]) => `  --${k} N`.padEnd(26) + `${f.help} (${f.min}..${f.max}, default ${f.dflt}${'env' in f ? `, or $${f.env}` : ''})`);
  return ['usage: node dist/examples/service/server.js [options]', `  --ckpt FILE`.padEnd(26) + 'checkpoint (default: the shipped model)', ...lines].join('\n');
}

function parseFlags(argv: string[]): { port: number; ckpt: string; opts: ServiceOptions } {
  const { values } = parseArgs({
    args: argv,
    options: { ckpt: { type: 'string' }, help: { type: 'boolean' }, ...Object.fromEntries(Object.keys(FLAGS).map((k) => [k, { type: 'string' as const }])) },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  const opts: ServiceOptions = { ...DEFAULT_OPTIONS };
  let port: number = FLAGS.port.dflt;
  for (const [name, f] of Object.entries(FLAGS)) {
    const raw = (values as Record<string, unknown>)[name] ?? ('env' in f ? process.env[f.env] : undefined);
    if (raw === undefined) continue;
    const v = Number(raw);
    if (!/^\d+$/.test(String(raw)) || v < f.min || v > f.max) throw new Error(`--${name} must be an integer in ${f.min}..${f.max}, got ${JSON.stringify(raw)}`);
    if ('key' in f) opts[f.key] = v;
    else port = v;
  }
  return { port, ckpt: (values.ckpt as string | undefined) ?? DEFAULT_MODEL, opts };
}

async function main(): Promise<void> {
  let flags;
  try {
    flags = parseFlags(process.argv.slice(2));
  } catch (e) {
    console.error(`tdq-service: ${(e as Error).message}\n${usage()}`);
    process.exit(2);
  }
  const pipe = await loadPipeline(flags.ckpt);
  const service = new Service(pipe, flags.opts);
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signals > 1) {
      console.log(`tdq-service: ${sig} again: aborting in-flight work now`);
      return service.abortRunning();
    }
    console.log(`tdq-service: ${sig}: stopping`);
    service.shutdown().then(
      () => (process.exitCode = 0),
      (e) => {
        console.error(`tdq-service: shutdown failed: ${(e as Error).stack}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const port = await service.listen(flags.port);
  const [c, h, w] = pipe.imageShape;
  const o = flags.opts;
  console.log(`tdq-service: listening on http://127.0.0.1:${port} (model ${pipe.source}, ${c}x${h}x${w}; n <= ${o.maxN}, steps <= ${o.maxSteps}, concurrency ${o.concurrency}, queue ${o.maxQueue})`);
}

main().catch((e) => {
  console.error(`tdq-service: ${(e as Error).message}`);
  process.exit(1);
});
