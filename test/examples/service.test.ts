// The example service (examples/service) in a child process on a free
// loopback port: answers, validation, limits, overload, cancellation of work
// for gone clients, health, metrics, a short load test and SIGTERM.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';

import { type RunningServer, metrics, parseMetrics, request, runLoad, startServer } from '../../bench/service_load';
import { decodePng } from '../../src/io/png';

const json = (o: unknown) => JSON.stringify(o);

/** Polls /metrics until `ok` holds (the server works asynchronously); fails after 30 s. */
async function waitFor(port: number, what: string, ok: (m: Map<string, number>) => boolean): Promise<Map<string, number>> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const m = await metrics(port);
    if (ok(m)) return m;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; metrics:\n${[...m].map(([k, v]) => `${k} ${v}`).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A POST /generate we can drop: resolves `answered` if the server answers first. */
function openRequest(port: number, body: string) {
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/generate', agent: false });
  const answered = new Promise<number>((resolve) => req.on('response', (res) => (res.resume(), resolve(res.statusCode ?? 0))));
  req.on('error', () => {});
  req.end(body);
  return { drop: () => req.destroy(), answered };
}

const IN_FLIGHT = 'tdq_service_in_flight';
const QUEUED = 'tdq_service_queue_length';

describe('example service', () => {
  let s: RunningServer;
  before(async () => {
    // Long requests (steps up to 300) let the test hold the one slot and the one queue place.
    s = await startServer(['--max-n', '4', '--max-steps', '300', '--concurrency', '1', '--max-queue', '1', '--shutdown-grace-ms', '20000']);
  });
  after(() => {
    if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
  });

  it('POST /generate returns a PNG grid of the right size, or base64 PNGs with format json', async () => {
    const r = await request(s.port, 'POST', '/generate', json({ n: 3, steps: 5, seed: 1 }));
    assert.equal(r.status, 200, r.body.toString());
    assert.equal(r.headers['content-type'], 'image/png');
    const grid = decodePng(r.body);
    // 3 images of 32x32 in one row, 2 px padding around and between.
    assert.deepEqual([grid.channels, grid.height, grid.width], [1, 36, 3 * 34 + 2]);
    const j = await request(s.port, 'POST', '/generate', json({ n: 3, steps: 5, seed: 1, format: 'json' }));
    assert.equal(j.status, 200, j.body.toString());
    const body = JSON.parse(j.body.toString()) as { images: string[]; width: number; height: number };
    assert.equal(body.images.length, 3);
    // Same seed, same images: the JSON's second image is the grid's second tile.
    const second = decodePng(Buffer.from(body.images[1], 'base64'));
    assert.deepEqual([second.height, second.width], [32, 32]);
    const tile = Float32Array.from({ length: 32 * 32 }, (_, i) => grid.data[(2 + Math.floor(i / 32)) * grid.width + 36 + (i % 32)]);
    assert.deepEqual(second.data, tile);
    assert.ok(new Set(second.data).size > 10, 'the image is not blank');
  });

  it('bad requests get 400 naming the field and range, big bodies 413', async () => {
    const cases: [string, number, RegExp][] = [
      ['{"n": 2,', 400, /not valid JSON/],
      ['[1, 2]', 400, /must be a JSON object, got an array/],
      [json({ n: 5 }), 400, /n must be an integer in 1\.\.4, got 5/],
      [json({ n: 1.5 }), 400, /n must be an integer in 1\.\.4, got 1\.5/],
      [json({ steps: 301 }), 400, /steps must be an integer in 1\.\.300, got 301/],
      [json({ steps: 300 }), 400, /steps: 300 does not fit ddim with T = 1000/],
      [json({ sampler: 'euler' }), 400, /sampler must be one of ddim, plms, dpmpp, got "euler"/],
      [json({ seed: -1 }), 400, /seed must be an integer in 0\.\.4294967295/],
      [json({ class: 3 }), 400, /class: this model is not class-conditional/],
      [json({ format: 'gif' }), 400, /format must be one of png, json/],
      [json({ size: 64 }), 400, /unknown field "size"/],
      [json({ n: 1, pad: 'x'.repeat(5000) }), 413, /over the limit of 4096 bytes/],
    ];
    for (const [body, status, message] of cases) {
      const r = await request(s.port, 'POST', '/generate', body);
      assert.equal(r.status, status, `${body.slice(0, 40)}: ${r.body}`);
      assert.match((JSON.parse(r.body.toString()) as { error: string }).error, message);
    }
    assert.equal((await request(s.port, 'GET', '/generate')).status, 405);
    assert.equal((await request(s.port, 'GET', '/nowhere')).status, 404);
  });

  it('overload gets 503 with Retry-After; gone clients leave the queue and stop the engine', async () => {
    const m0 = await metrics(s.port);
    const a = openRequest(s.port, json({ n: 1, steps: 250 }));
    await waitFor(s.port, 'the first request to run', (m) => m.get(IN_FLIGHT) === 1);
    const b = openRequest(s.port, json({ n: 1, steps: 250 }));
    await waitFor(s.port, 'the second request to wait', (m) => m.get(QUEUED) === 1);
    const c = await request(s.port, 'POST', '/generate', json({ n: 1, steps: 5 }));
    assert.equal(c.status, 503, c.body.toString());
    assert.match(String(c.headers['retry-after']), /^[1-9]\d*$/);
    assert.match(c.body.toString(), /busy: 1 running and 1 waiting/);

    b.drop();
    await waitFor(s.port, 'the queue to empty', (m) => m.get(QUEUED) === 0);
    a.drop();
    const m1 = await waitFor(s.port, 'the generation to stop', (m) => m.get(IN_FLIGHT) === 0);
    const diff = (k: string) => (m1.get(k) ?? 0) - (m0.get(k) ?? 0);
    assert.equal(diff('tdq_service_cancelled_total{stage="queued"}'), 1);
    assert.equal(diff('tdq_service_cancelled_total{stage="running"}'), 1);
    assert.equal(diff('tdq_service_generations_total{outcome="cancelled"}'), 1);
    assert.equal(diff('tdq_service_generations_total{outcome="ok"}'), 0);
    // The dropped queued request never ran; the running one stopped before its 250 steps.
    assert.ok(diff('tdq_service_sampler_steps_total') < 250, `${diff('tdq_service_sampler_steps_total')} steps ran`);
    assert.equal(diff('tdq_service_requests_total{route="/generate",code="499"}'), 2);
    // And the service still serves.
    assert.equal((await request(s.port, 'POST', '/generate', json({ n: 1, steps: 2 }))).status, 200);
  });

  it('GET /health and GET /metrics answer (Prometheus text format)', async () => {
    const h = await request(s.port, 'GET', '/health');
    assert.equal(h.status, 200);
    const health = JSON.parse(h.body.toString()) as { status: string; limits: { n: number[]; steps: number[] }; model: { image: object } };
    assert.equal(health.status, 'ok');
    assert.deepEqual(health.limits.n, [1, 4]);
    assert.deepEqual(health.limits.steps, [1, 300]);
    assert.deepEqual(health.model.image, { channels: 1, height: 32, width: 32 });

    const r = await request(s.port, 'GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const text = r.body.toString();
    const typed = new Set<string>();
    for (const line of text.trimEnd().split('\n')) {
      const t = /^# TYPE (\w+) (counter|gauge|histogram)$/.exec(line);
      if (t) typed.add(t[1]);
      else if (!line.startsWith('# HELP ')) {
        const m = /^([a-zA-Z_:][\w:]*)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[\d.e+-]+|\+Inf|NaN)$/.exec(line);
        assert.ok(m, `not a Prometheus sample line: ${line}`);
        assert.ok(typed.has(m[1].replace(/_(bucket|sum|count)$/, '')) || typed.has(m[1]), `${m[1]} has no TYPE line before it`);
      }
    }
    const m = parseMetrics(text);
    assert.ok(m.get('process_resident_memory_bytes')! > 10 * 2 ** 20);
    assert.ok(m.get('tdq_engine_live_bytes')! > 1e6, 'the weights are live engine memory');
    assert.ok(m.get('tdq_service_requests_total{route="/generate",code="400"}')! >= 10);
    assert.ok(m.get('tdq_service_requests_total{route="/generate",code="503"}')! >= 1);
    assert.ok(m.get('tdq_service_request_duration_seconds_count{route="/generate"}')! >= 15);
  });

  it('a short load test with bad requests and disconnects gets only clear answers', async () => {
    const r = await runLoad(s.port, { durationS: 3, connections: 3, rate: 20, dropEveryMs: 500, warmupS: 0 });
    assert.equal(r.errors, 0, 'connection errors');
    assert.equal(r.timeouts, 0, 'timeouts');
    assert.ok((r.statuses['200'] ?? 0) >= 1, JSON.stringify(r.statuses));
    assert.ok((r.statuses['400'] ?? 0) >= 1, JSON.stringify(r.statuses));
    for (const code of Object.keys(r.statuses)) assert.ok(['200', '400', '503'].includes(code), `unexpected status ${code}: ${JSON.stringify(r.statuses)}`);
    assert.equal(r.server['generations failed (500)'], 0);
    assert.ok(r.memory.length >= 2, 'memory was sampled every second');
    assert.equal((await request(s.port, 'GET', '/health')).status, 200);
  });

  it('SIGTERM finishes in-flight work, refuses new connections and exits 0', async () => {
    await waitFor(s.port, 'an idle service', (m) => m.get(IN_FLIGHT) === 0 && m.get(QUEUED) === 0);
    const inFlight = request(s.port, 'POST', '/generate', json({ n: 1, steps: 30 }));
    await waitFor(s.port, 'the request to run', (m) => m.get(IN_FLIGHT) === 1);
    s.proc.kill('SIGTERM');
    const r = await inFlight;
    assert.equal(r.status, 200, r.body.toString());
    assert.equal(decodePng(r.body).width, 36);
    const exit = await s.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, s.output());
    assert.match(s.output(), /stopped: connections closed, model disposed/);
    await assert.rejects(request(s.port, 'GET', '/health'), /ECONNREFUSED/);
  });
});

describe('example service shutdown with no grace', () => {
  it('aborts in-flight work on SIGTERM, answers 503 and exits 0', async () => {
    const s = await startServer(['--max-steps', '300', '--shutdown-grace-ms', '0']);
    try {
      const inFlight = request(s.port, 'POST', '/generate', json({ n: 1, steps: 250 }));
      await waitFor(s.port, 'the request to run', (m) => m.get(IN_FLIGHT) === 1);
      s.proc.kill('SIGTERM');
      const r = await inFlight;
      assert.equal(r.status, 503, r.body.toString());
      assert.match(r.body.toString(), /shut down before the images were done/);
      assert.deepEqual(await s.exited, { code: 0, signal: null }, s.output());
    } finally {
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
    }
  });
});
