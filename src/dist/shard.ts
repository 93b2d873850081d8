// Sampling split across ranks: n images in batches of B, batch b drawn by rank
// b mod size, its noise taken from the Generator at the offset batch b has in
// a one-process run (b * B * drawsPerImage: every full batch costs the same
// number of draws). So `sample --nproc N` writes the same images as one
// process, for every sampler, and the ranks need no communication until the
// end.
import { Generator } from '../tensor/random';
import { fromArray } from '../tensor/tensor';
import type { Communicator } from './communicator';

export interface BatchSlot {
  /** Batch index in the one-process order. */
  index: number;
  /** First image of the batch. */
  start: number;
  /** Images in it (B, or fewer for the last batch). */
  count: number;
}

/** The batches of n images in batches of batchSize that rank `rank` of `size` draws, in order. */
export function batchesOfRank(n: number, batchSize: number, rank: number, size: number): BatchSlot[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`batchesOfRank: n must be a positive integer, got ${n}`);
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchesOfRank: batchSize must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(size) || size < 1 || !Number.isInteger(rank) || rank < 0 || rank >= size) throw new RangeError(`batchesOfRank: rank ${rank} of ${size}`);
  const out: BatchSlot[] = [];
  const batches = Math.ceil(n / batchSize);
  for (let b = rank; b < batches; b += size) out.push({ index: b, start: b * batchSize, count: Math.min(batchSize, n - b * batchSize) });
  return out;
}

/**
 * Positions `gen` where batch `slot` starts in a one-process run whose
 * generator started at `base`, runs `draw`, and checks that the batch took
 * exactly the draws it was accounted for (an Error otherwise: a sampler whose
 * noise depends on values would break the equality of 1 and N ranks).
 */
export async function drawBatch<T>(gen: Generator, base: number, slot: BatchSlot, drawsPerImage: number, draw: () => Promise<T>): Promise<T> {
  const from = (gen.offset = base + slot.start * drawsPerImage);
  const out = await draw();
  if (gen.offset !== from + slot.count * drawsPerImage)
    throw new Error(`internal: batch ${slot.index} drew ${gen.offset - from} normals, accounted ${slot.count * drawsPerImage} (${drawsPerImage} per image)`);
  return out;
}

/**
 * Every rank's batches (each rank's `local` holds its batches' images in its
 * own order, `imageSize` floats each) assembled into the n images in
 * one-process order, on every rank (allgather; padded to the largest share).
 */
export function gatherBatches(comm: Communicator, local: Float32Array, n: number, batchSize: number, imageSize: number): Promise<Float32Array> {
  const per = (r: number) => batchesOfRank(n, batchSize, r, comm.size).reduce((a, s) => a + s.count, 0);
  let most = 0;
  for (let r = 0; r < comm.size; ++r) most = Math.max(most, per(r));
  if (local.length !== per(comm.rank) * imageSize) throw new RangeError(`gatherBatches: rank ${comm.rank} holds ${local.length} floats, expected ${per(comm.rank) * imageSize}`);
  const padded = new Float32Array(most * imageSize);
  padded.set(local);
  const t = fromArray(padded, [padded.length]);
  const all = comm.allgather(t);
  t.dispose();
  return all.data().then((d) => {
    all.dispose();
    const flat = d as Float32Array;
    const out = new Float32Array(n * imageSize);
    for (let r = 0; r < comm.size; ++r) {
      let at = r * most * imageSize;
      for (const s of batchesOfRank(n, batchSize, r, comm.size)) {
        out.set(flat.subarray(at, at + s.count * imageSize), s.start * imageSize);
        at += s.count * imageSize;
      }
    }
    return out;
  });
}

/**
 * The batch loop of the pipelines' generate(): this rank's batches of n
 * images, each drawn by `drawOne(slot, gen)` (returning its (count, ...)
 * images, imageSize floats each) with the generator at the batch's offset of
 * a one-process run; with more than one rank the images are gathered, so
 * every rank returns all n in one-process order.
 */
export async function generateBatches(
  o: { n: number; batchSize: number; seed: number; imageSize: number; drawsPerImage: number; comm?: Communicator },
  drawOne: (slot: BatchSlot, gen: Generator) => Promise<Float32Array>,
): Promise<Float32Array> {
  const rank = o.comm?.rank ?? 0, size = o.comm?.size ?? 1;
  const slots = batchesOfRank(o.n, o.batchSize, rank, size);
  const local = new Float32Array(slots.reduce((a, s) => a + s.count, 0) * o.imageSize);
  const gen = new Generator(o.seed);
  const base = gen.offset;
  let at = 0;
  for (const slot of slots) {
    const imgs = await drawBatch(gen, base, slot, o.drawsPerImage, () => drawOne(slot, gen));
    if (imgs.length !== slot.count * o.imageSize) throw new RangeError(`generateBatches: batch ${slot.index} gave ${imgs.length} floats, expected ${slot.count * o.imageSize}`);
    local.set(imgs, at);
    at += imgs.length;
  }
  return size > 1 ? gatherBatches(o.comm!, local, o.n, o.batchSize, o.imageSize) : local;
}
