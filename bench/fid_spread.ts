// How the spread of FID-FMNIST shrinks with the number of samples N (issue 13:
// "say how the spread shrinks from 1,000 to 5,000").
//
// One pool of --pool samples of a full-precision model, drawn exactly as the
// results protocol draws a cell (bench/tdq_protocol.ts: DDIM eta 0, x0
// clipped, batches of 250 whose noise is seeded by seed * 100003 + batch, so
// the pool's first 1,000 images are the protocol's seed-0 cell), is cut into
// disjoint subsets of each size N; each subset is what another seed would give
// (independent noise), so the standard deviation of their FIDs is the
// seed-to-seed spread of a cell at that N. The pool is kept in a file and
// extended batch by batch, so an interrupted run resumes.
//
//   node dist/bench/fid_spread.js [--ckpt models/fmnist-small.safetensors] [--pool 5000] \
//     [--sizes 500,1000,2500] [--steps 25] [--cache /tmp/fid-spread-pool.f32] [--out bench/results/fid-spread.md]
import fs from 'node:fs';
import os from 'node:os';

import { sample } from '../src/diffusion/samplers/index';
import { loadFeatureNet } from '../src/eval/run';
import { protocolBatchSeed, protocolFid, protocolReference } from '../src/eval/protocol_cell';
import { meanCI } from '../src/eval/protocol';
import { scheduleFromConfig } from '../src/models/diffusion';
import { loadModel } from '../src/models/load';
import { benchArgs } from './args';

const BATCH = 250;

const USAGE = 'node dist/bench/fid_spread.js [options]';

async function main(): Promise<void> {
  const o = benchArgs(
    USAGE,
    {
      ckpt: { type: 'string', value: 'FILE', default: 'models/fmnist-small.safetensors', help: 'full-precision checkpoint' },
      pool: { type: 'string', value: 'N', default: '5000', help: 'samples in the pool' },
      sizes: { type: 'string', value: 'A,B,..', default: '500,1000,2500', help: 'subset sizes N (each at most half the pool)' },
      steps: { type: 'string', value: 'S', default: '25', help: 'DDIM steps' },
      seed: { type: 'string', value: 'K', default: '0', help: "the pool's seed (batch noise seed K * 100003 + batch)" },
      cache: { type: 'string', value: 'FILE', help: 'the pool file, extended batch by batch (default: a file in the temp folder)' },
      out: { type: 'string', value: 'FILE.md', help: 'write the result table here' },
    },
    (a) => ({ ckpt: a.str('ckpt'), pool: a.int('pool', 2), sizes: a.numList('sizes', { integer: true, min: 1 }), steps: a.int('steps', 1), seed: a.int('seed', 0), cache: a.get('cache'), out: a.get('out') }),
  );
  const { pool, sizes, steps, seed } = o;
  for (const s of sizes) if (2 * s > pool) throw new Error(`--sizes ${s}: the pool of ${pool} holds fewer than two disjoint subsets of that size`);
  const cache = o.cache ?? `${os.tmpdir()}/fid-spread-${seed}-${steps}.f32`;

  const t0 = Date.now();
  const m = await loadModel(o.ckpt, { expect: 'float' });
  const p = m.config.model.params;
  const shape = [p.channels, p.image_size, p.image_size] as const;
  const per = shape[0] * shape[1] * shape[2];
  const schedule = scheduleFromConfig(p);
  const x0 = new Float32Array(pool * per);
  let have = fs.existsSync(cache) ? Math.floor(fs.statSync(cache).size / 4 / per / BATCH) * BATCH : 0;
  have = Math.min(have, pool);
  if (have) x0.set(new Float32Array(fs.readFileSync(cache).buffer.slice(0, have * per * 4)));
  const sampleStart = Date.now();
  for (let b = have / BATCH; b * BATCH < pool; ++b) {
    const n = Math.min(BATCH, pool - b * BATCH);
    const x = await sample((xt, t) => m.model.forward(xt, t), { sampler: 'ddim', steps, schedule, shape: [n, ...shape], seed: protocolBatchSeed(seed, b), clipDenoised: true });
    const d = x.dataSync() as Float32Array;
    x.dispose();
    x0.set(d, b * BATCH * per);
    fs.appendFileSync(cache, Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    console.log(`sampled ${b * BATCH + n} / ${pool} (${((Date.now() - sampleStart) / 1000).toFixed(0)} s)`);
  }
  m.dispose();

  const net = await loadFeatureNet('fmnist');
  const reference = protocolReference();
  // The protocol's scoring (src/eval/protocol_cell.ts); for N a multiple of 250, the pool's first N samples of seed K are that seed's protocol cell at N.
  const fid = (from: number, n: number) => protocolFid(x0.subarray(from * per, (from + n) * per), { name: `pool[${from}:${from + n}]`, shape, net, reference });
  const rows: string[] = [];
  for (const n of sizes) {
    const k = Math.floor(pool / n);
    const v: number[] = [];
    for (let i = 0; i < k; ++i) v.push(await fid(i * n, n));
    const { mean, sd, half } = meanCI(v);
    rows.push(`| ${n} | ${k} | ${mean.toFixed(2)} | ${sd.toFixed(2)} | ${((sd / mean) * 100).toFixed(1)}% | ±${half.toFixed(2)} | ${v.map((x) => x.toFixed(1)).join(', ')} |`);
    console.log(rows[rows.length - 1]);
  }
  const all = await fid(0, pool);
  const load = os.loadavg().map((x) => x.toFixed(2)).join(' / ');
  const md = [
    '# FID-FMNIST spread against the number of samples (issue 13)',
    '',
    `- command: \`node dist/bench/fid_spread.js --ckpt ${o.ckpt} --pool ${pool} --sizes ${sizes.join(',')} --steps ${steps} --seed ${seed}\``,
    `- date: ${new Date().toISOString()}; ${((Date.now() - t0) / 1000).toFixed(0)} s in all (sampling resumed from ${have} cached samples); load average at the end ${load}`,
    `- pool: ${pool} samples of ${o.ckpt} (EMA weights), DDIM ${steps} steps, eta 0, x0 clipped, batches of ${BATCH} seeded ${seed} * 100003 + batch (the first 1,000 are the protocol's seed-${seed} cell); FID-FMNIST against the 60,000 training images, samples rounded to 8 bits`,
    '- each row: the pool cut into k disjoint subsets of N samples (independent noise, as different seeds give); sd over subsets = the seed-to-seed spread of one cell at that N; the 95% interval is of the mean of the k subsets (Student t), not of one cell',
    '',
    '| N | subsets k | mean FID | sd | sd / mean | 95% interval of the mean | subset FIDs |',
    '|---|---|---|---|---|---|---|',
    ...rows,
    '',
    `FID of the whole pool (N = ${pool}): ${all.toFixed(2)}. FID is biased upward at small N (the mean falls as N grows), so compare cells only at the same N.`,
    '',
  ].join('\n');
  if (o.out) fs.writeFileSync(o.out, md);
  console.log(md);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
