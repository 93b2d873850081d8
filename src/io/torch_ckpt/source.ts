// Bounded, synchronous reads from one byte range of an open file (the pickle
// inside a zip entry, or the leading pickles of a legacy file): a small window
// is cached, and every read is checked against the range's end, so a lying
// length is an error instead of a huge allocation.
import fs from 'node:fs';

import { TorchCheckpointError } from './errors';

const WINDOW = 1 << 16;

export class FileSource {
  /** Absolute file position of the next byte. */
  pos: number;
  private buf = new Uint8Array(0);
  private bufStart = 0;

  constructor(readonly fd: number, readonly file: string, readonly start: number, readonly end: number, readonly what: string) {
    this.pos = start;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private fail(n: number): TorchCheckpointError {
    return new TorchCheckpointError(this.file, `unexpected end of ${this.what}: ${n} bytes needed, ${this.remaining} left (the file is truncated or a length is wrong)`, undefined, this.pos);
  }

  private fill(at: number, n: number): void {
    const len = Math.min(Math.max(n, WINDOW), this.end - at);
    const buf = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const got = fs.readSync(this.fd, buf, done, len - done, at + done);
      if (got === 0) throw new TorchCheckpointError(this.file, `the file ended while reading ${this.what}`, undefined, at + done);
      done += got;
    }
    this.buf = buf;
    this.bufStart = at;
  }

  /** The next n bytes (a view: copy before keeping it). */
  bytes(n: number): Uint8Array {
    if (n < 0 || n > this.remaining) throw this.fail(n);
    const rel = this.pos - this.bufStart;
    if (rel < 0 || rel + n > this.buf.length) this.fill(this.pos, n);
    const off = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(off, off + n);
  }

  byte(): number {
    const rel = this.pos - this.bufStart;
    if (rel >= 0 && rel < this.buf.length && this.pos < this.end) {
      this.pos += 1;
      return this.buf[rel];
    }
    return this.bytes(1)[0];
  }

  /** A line ending in '\n' (not included), at most maxLen bytes. */
  line(maxLen: number): Uint8Array {
    const out: number[] = [];
    for (;;) {
      if (this.remaining === 0) throw this.fail(1);
      const b = this.byte();
      if (b === 0x0a) return Uint8Array.from(out);
      if (out.length >= maxLen) throw new TorchCheckpointError(this.file, `a text line in ${this.what} is longer than ${maxLen} bytes`, undefined, this.pos);
      out.push(b);
    }
  }
}

/** Reads exactly dst.length bytes at `position` (async; for tensor data). */
export async function readAt(fh: import('node:fs').promises.FileHandle, file: string, dst: Uint8Array, position: number, what: string): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const { bytesRead } = await fh.read(dst, done, Math.min(dst.length - done, 1 << 30), position + done);
    if (bytesRead === 0) throw new TorchCheckpointError(file, `unexpected end of file reading ${what}: ${done} of ${dst.length} bytes (the file is truncated)`, undefined, position + done);
    done += bytesRead;
  }
}

/**
 * A growing byte buffer reused across reads, one tensor's bytes at a time
 * (instead of a fresh buffer per tensor left for the garbage collector).
 * Sized up front to the largest read when that is known, it never regrows.
 */
export function scratchBuffer(initialBytes = 0): (bytes: number) => Uint8Array {
  let buf = new Uint8Array(initialBytes);
  return (bytes) => {
    if (buf.length < bytes) buf = new Uint8Array(bytes);
    return buf;
  };
}
