// Reading what training wrote, for the tests that compare runs: the tensors of
// a safetensors file, bit-for-bit comparison, and the losses of a run's log.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { readSafetensors } from '../../src/io/safetensors';
import type { TypedArray } from '../../src/tensor/native';

/** Every tensor of a safetensors file, copied out as stored, and its metadata. */
export async function readCheckpoint(file: string): Promise<{ tensors: Map<string, TypedArray>; metadata: Record<string, string> }> {
  const { tensors, metadata } = await readSafetensors(file);
  const out = new Map<string, TypedArray>();
  for (const [k, t] of tensors) {
    out.set(k, (await t.data()).slice());
    t.dispose();
  }
  return { tensors: out, metadata: metadata ?? {} };
}

/** readCheckpoint's tensors. */
export async function readTensors(file: string): Promise<Map<string, TypedArray>> {
  return (await readCheckpoint(file)).tensors;
}

/** Float32 values of a tensor read as stored (a float32 tensor's own array). */
export function f32(a: TypedArray | undefined, what = 'tensor'): Float32Array {
  assert.ok(a instanceof Float32Array, `${what} is not float32`);
  return a;
}

const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Whether two arrays hold the same bytes. */
export function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return bytes(a).equals(bytes(b));
}

/** The same keys, each tensor the same to the bit; the message names the first key that differs. */
export function assertBitIdentical(a: Map<string, ArrayBufferView>, b: Map<string, ArrayBufferView>, differs = 'differs'): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [k, x] of a) assert.ok(sameBits(x, b.get(k)!), `${k} ${differs}`);
}

/** The records of a run folder's log.jsonl, one a step. */
export function logRecords<T = { step: number; loss: number }>(dir: string): T[] {
  return fs.readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as T);
}

/** The loss of every logged step of a run folder. */
export function losses(dir: string): number[] {
  return logRecords(dir).map((r) => r.loss);
}
