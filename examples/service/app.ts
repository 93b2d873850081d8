// The HTTP service around one loaded pipeline: routes, body limits, the
// bounded queue, cancellation of work for gone clients, metrics and a
// graceful shutdown. server.ts is the command-line entry that wires it up.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import { type DiffusionPipeline, native, releaseMemory } from '../../src';
import { encodePng, makeGrid } from '../../src/io/png';
import { HttpError } from './errors';
import { CONTENT_TYPE, Counter, Gauge, Histogram, Registry } from './metrics';
import { QueueClosedError, WorkQueue } from './queue';
import { type GenerateRequest, type Limits, type ModelInfo, allowedSamplers, parseGenerateRequest } from './validate';

export interface ServiceOptions extends Limits {
  /** Generations run at once (the engine has one stream per process: 1 is the sensible default). */
  concurrency: number;
  /** Requests that may wait for a slot; more get 503 with Retry-After. */
  maxQueue: number;
  /** On shutdown, in-flight generations may finish for this long before they are aborted. */
  shutdownGraceMs: number;
  log?: (line: string) => void;
}

export const DEFAULT_OPTIONS: ServiceOptions = {
  maxN: 4,
  maxSteps: 50,
  maxBodyBytes: 4096,
  concurrency: 1,
  maxQueue: 4,
  shutdownGraceMs: 10_000,
};

/** nginx's code for "client closed the request before the answer": counted, never sent. */
export const CLIENT_CLOSED = 499;

class ClientGoneError extends Error {
  override name = 'ClientGoneError';
}
class ShutdownAbortError extends Error {
  override name = 'ShutdownAbortError';
}

const ROUTES = new Set(['/generate', '/health', '/metrics']);

export class Service {
  readonly server: http.Server;
  readonly queue: WorkQueue;
  readonly model: ModelInfo;
  private readonly registry = new Registry();
  private readonly requests: Counter;
  private readonly cancelled: Counter;
  private readonly generations: Counter;
  private readonly images: Counter;
  private readonly steps: Counter;
  private readonly latency: Histogram;
  private readonly running = new Set<AbortController>();
  private readonly handlers = new Set<Promise<void>>();
  private secondsPerJob = 1; // a moving average, for Retry-After
  private closing: Promise<void> | null = null;
  private readonly log: (line: string) => void;

  constructor(readonly pipe: DiffusionPipeline, readonly opts: ServiceOptions) {
    this.log = opts.log ?? ((l) => console.log(`tdq-service: ${l}`));
    this.queue = new WorkQueue(opts.concurrency, opts.maxQueue);
    this.model = { numClasses: pipe.numClasses, timesteps: pipe.diffusion.schedule.numTimesteps };
    const r = this.registry;
    this.requests = r.add(new Counter('tdq_service_requests_total', `HTTP requests answered, by route and status code (${CLIENT_CLOSED}: the client closed the connection first)`));
    this.latency = r.add(new Histogram('tdq_service_request_duration_seconds', 'Time from request to the end of the answer, by route', [0.005, 0.05, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]));
    this.generations = r.add(new Counter('tdq_service_generations_total', 'Generations started, by outcome (ok, cancelled: the client left or shutdown aborted it, error)'));
    for (const outcome of ['ok', 'cancelled', 'error']) this.generations.init({ outcome });
    this.cancelled = r.add(new Counter('tdq_service_cancelled_total', 'Work given up, by stage: queued (client left while waiting), running (client left; the engine was stopped), shutdown'));
    for (const stage of ['queued', 'running', 'shutdown']) this.cancelled.init({ stage });
    this.images = r.add(new Counter('tdq_service_images_total', 'Images generated and sent'));
    this.images.init({});
    this.steps = r.add(new Counter('tdq_service_sampler_steps_total', 'Sampler steps the engine has run'));
    this.steps.init({});
    r.add(new Gauge('tdq_service_in_flight', 'Generations running now', () => this.queue.running));
    r.add(new Gauge('tdq_service_queue_length', 'Requests waiting for a generation slot', () => this.queue.queued));
    r.add(new Gauge('tdq_service_queue_capacity', 'Requests that may wait before 503', () => this.opts.maxQueue));
    r.add(new Gauge('process_resident_memory_bytes', 'Resident set size of the process', () => process.memoryUsage.rss()));
    r.add(new Gauge('nodejs_heap_used_bytes', 'V8 heap in use', () => process.memoryUsage().heapUsed));
    r.add(new Gauge('nodejs_external_bytes', 'Memory of C++ objects bound to JS objects (Buffers included), as V8 counts it', () => process.memoryUsage().external));
    r.add(new Gauge('tdq_engine_live_bytes', "Bytes of the engine's live tensors (weights included)", () => native().memory().liveBytes));
    r.add(new Gauge('tdq_engine_peak_bytes', "Peak of the engine's live tensor bytes", () => native().memory().peakBytes));
    r.add(new Gauge('tdq_engine_host_cache_bytes', 'Freed large host buffers the engine keeps for reuse', () => native().memory().cachedBytes));
    this.server = http.createServer((req, res) => {
      const p = this.handle(req, res).finally(() => this.handlers.delete(p));
      this.handlers.add(p);
    });
  }

  /** Listens on 127.0.0.1 only; port 0 picks a free one. Resolves to the port. */
  listen(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve((this.server.address() as AddressInfo).port);
      });
    });
  }

  get shuttingDown(): boolean {
    return this.closing !== null;
  }

  /**
   * Stops accepting, answers waiting requests 503, lets running generations
   * finish for opts.shutdownGraceMs and then aborts them, closes every
   * connection and frees the model. Idempotent.
   */
  shutdown(): Promise<void> {
    this.closing ??= (async () => {
      this.log(`shutting down: ${this.queue.running} running, ${this.queue.queued} waiting (grace ${this.opts.shutdownGraceMs} ms)`);
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.server.closeIdleConnections();
      this.queue.close();
      const timer = setTimeout(() => this.abortRunning(), this.opts.shutdownGraceMs);
      while (this.handlers.size) await Promise.allSettled([...this.handlers]);
      clearTimeout(timer);
      this.server.closeAllConnections();
      await closed;
      this.pipe.dispose();
      await releaseMemory();
      this.log('stopped: connections closed, model disposed');
    })();
    return this.closing;
  }

  /** Aborts every running generation now (their clients get 503). */
  abortRunning(): void {
    for (const ac of this.running) ac.abort(new ShutdownAbortError('aborted by shutdown'));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = process.hrtime.bigint();
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const route = ROUTES.has(url.pathname) ? url.pathname : 'other';
    res.on('close', () => {
      const code = res.writableFinished ? res.statusCode : CLIENT_CLOSED;
      this.requests.inc({ route, code: String(code) });
      this.latency.observe(Number(process.hrtime.bigint() - t0) / 1e9, { route });
    });
    if (this.shuttingDown) res.setHeader('Connection', 'close');
    try {
      if (route === 'other') throw new HttpError(404, `no route ${url.pathname} (routes: POST /generate, GET /health, GET /metrics)`);
      const method = route === '/generate' ? 'POST' : 'GET';
      if (req.method !== method) throw new HttpError(405, `${route} takes ${method}, got ${req.method}`, { Allow: method });
      if (route === '/health') return this.health(res);
      if (route === '/metrics') return void res.writeHead(200, { 'Content-Type': CONTENT_TYPE }).end(this.registry.render());
      await this.generate(req, res);
    } catch (e) {
      this.fail(req, res, e);
    }
  }

  private health(res: http.ServerResponse): void {
    const [c, h, w] = this.pipe.imageShape;
    const body = {
      status: this.shuttingDown ? 'shutting down' : 'ok',
      model: { source: this.pipe.source, image: { channels: c, height: h, width: w }, classes: this.model.numClasses },
      limits: { n: [1, this.opts.maxN], steps: [1, this.opts.maxSteps], samplers: allowedSamplers(this.opts, this.model), bodyBytes: this.opts.maxBodyBytes },
      queue: { running: this.queue.running, waiting: this.queue.queued, concurrency: this.opts.concurrency, capacity: this.opts.maxQueue },
    };
    sendJson(res, this.shuttingDown ? 503 : 200, body);
  }

  private async generate(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (this.shuttingDown) throw new HttpError(503, 'the service is shutting down', { 'Retry-After': '5' });
    // Aborted when the connection closes before the answer is complete: a
    // waiting request leaves the queue, a running one stops the engine.
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) ac.abort(new ClientGoneError('the client closed the connection'));
    });
    const spec = parseGenerateRequest(await readBody(req, this.opts.maxBodyBytes), this.opts, this.model);
    const slot = this.queue.acquire(ac.signal);
    if (!slot) {
      const retry = Math.max(1, Math.ceil((this.secondsPerJob * (this.queue.running + this.queue.queued)) / this.opts.concurrency));
      throw new HttpError(503, `busy: ${this.queue.running} running and ${this.queue.queued} waiting (capacity ${this.opts.maxQueue}); retry in ${retry} s`, { 'Retry-After': String(retry) });
    }
    let release: () => void;
    try {
      release = await slot;
    } catch (e) {
      if (e instanceof QueueClosedError) throw new HttpError(503, 'the service is shutting down', { 'Retry-After': '5' });
      this.cancelled.inc({ stage: 'queued' });
      throw e;
    }
    this.running.add(ac);
    const t0 = Date.now();
    try {
      const out = await this.pipe.generate({
        n: spec.n, sampler: spec.sampler, steps: spec.steps, seed: spec.seed, labels: spec.class, signal: ac.signal,
        onProgress: () => this.steps.inc(),
      });
      this.generations.inc({ outcome: 'ok' });
      this.secondsPerJob = 0.8 * this.secondsPerJob + 0.2 * ((Date.now() - t0) / 1000);
      this.images.inc({}, spec.n);
      this.send(res, spec, out.data, out.shape);
    } catch (e) {
      if (ac.signal.aborted) {
        this.generations.inc({ outcome: 'cancelled' });
        const shutdown = ac.signal.reason instanceof ShutdownAbortError;
        this.cancelled.inc({ stage: shutdown ? 'shutdown' : 'running' });
        if (shutdown) throw new HttpError(503, 'the service shut down before the images were done', { 'Retry-After': '5' });
      } else {
        this.generations.inc({ outcome: 'error' });
      }
      throw e;
    } finally {
      this.running.delete(ac);
      release();
    }
  }

  private send(res: http.ServerResponse, spec: GenerateRequest, data: Float32Array, shape: [number, number, number, number]): void {
    const [n, c, h, w] = shape;
    const headers = { 'X-Images': String(n), 'X-Image-Size': `${w}x${h}`, 'X-Seed': String(spec.seed) };
    if (spec.format === 'json') {
      const images = Array.from({ length: n }, (_, k) => encodePng(data, [c, h, w], k * c * h * w).toString('base64'));
      return sendJson(res, 200, { n, channels: c, height: h, width: w, sampler: spec.sampler, steps: spec.steps ?? this.model.timesteps, seed: spec.seed, images }, headers);
    }
    const grid = makeGrid({ data, shape }, { nrow: Math.min(n, 8) });
    const png = encodePng(grid.data, [grid.channels, grid.height, grid.width]);
    res.writeHead(200, { ...headers, 'Content-Type': 'image/png', 'Content-Length': png.length, 'X-Grid-Columns': String(Math.min(n, 8)) }).end(png);
  }

  private fail(req: http.IncomingMessage, res: http.ServerResponse, e: unknown): void {
    if (e instanceof ClientGoneError || res.destroyed) return; // nobody to answer
    if (res.headersSent) return void res.destroy();
    if (e instanceof HttpError) {
      // A body we did not read to the end must not be parsed as the next request.
      if (!req.complete) res.setHeader('Connection', 'close');
      return sendJson(res, e.status, { error: e.message }, e.headers);
    }
    this.log(`error: ${(e as Error)?.stack ?? String(e)}`);
    sendJson(res, 500, { error: `generation failed: ${(e as Error)?.message ?? String(e)}` });
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text) }).end(text);
}

/** The body as UTF-8 text; HttpError 413 past `limit` bytes (declared or sent). */
function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  const tooLarge = () => new HttpError(413, `the request body is over the limit of ${limit} bytes`);
  const declared = Number(req.headers['content-length']);
  if (declared > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (b: Buffer) => {
      size += b.length;
      if (size > limit) {
        req.off('data', onData);
        req.pause();
        return reject(tooLarge());
      }
      chunks.push(b);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
    req.once('close', () => {
      if (!req.complete) reject(new ClientGoneError('the client closed the connection while sending'));
    });
  });
}
