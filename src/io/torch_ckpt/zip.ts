// The zip container of torch.save (PyTorch >= 1.6), read by hand from the
// central directory: no decompression (torch writes every entry stored,
// aligned to 64 bytes), zip64 records understood, and every offset and size
// checked against the file before use.
import fs from 'node:fs';

import { TorchCheckpointError } from './errors';

export interface ZipEntry {
  name: string;
  /** 0 = stored; anything else is compressed, which torch never writes. */
  method: number;
  compressedSize: number;
  size: number;
  /** Where the entry's header starts. */
  headerOffset: number;
}

const EOCD = 0x06054b50, EOCD64 = 0x06064b50, EOCD64_LOC = 0x07064b50, CDH = 0x02014b50, LFH = 0x04034b50;
/** Entries one archive may list (a checkpoint has one per storage). */
const MAX_ENTRIES = 4_000_000;

function readExact(fd: number, file: string, pos: number, len: number, what: string): Buffer {
  const b = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const got = fs.readSync(fd, b, done, len - done, pos + done);
    if (got === 0) throw new TorchCheckpointError(file, `zip: the file ended reading ${what}`, undefined, pos + done);
    done += got;
  }
  return b;
}

function u64(b: Buffer, at: number, file: string, what: string): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TorchCheckpointError(file, `zip: ${what} ${v} is impossible`);
  return Number(v);
}

export class ZipArchive {
  readonly entries = new Map<string, ZipEntry>();

  private constructor(readonly fd: number, readonly file: string, readonly fileSize: number) {}

  static open(fd: number, file: string, fileSize: number): ZipArchive {
    const z = new ZipArchive(fd, file, fileSize);
    z.readDirectory();
    return z;
  }

  private fail(msg: string, key?: string, offset?: number): TorchCheckpointError {
    return new TorchCheckpointError(this.file, `zip: ${msg}`, key, offset);
  }

  private readDirectory(): void {
    const { fd, file, fileSize } = this;
    if (fileSize < 22) throw this.fail(`the file is ${fileSize} bytes, too short for a zip archive (truncated?)`);
    const tailLen = Math.min(fileSize, 22 + 0xffff);
    const tailStart = fileSize - tailLen;
    const tail = readExact(fd, file, tailStart, tailLen, 'the end of the archive');
    let at = -1;
    for (let i = tailLen - 22; i >= 0; --i) {
      if (tail.readUInt32LE(i) === EOCD && i + 22 + tail.readUInt16LE(i + 20) <= tailLen) {
        at = i;
        break;
      }
    }
    if (at < 0) throw this.fail('no end-of-central-directory record: the archive is truncated or not a zip file');
    const eocdPos = tailStart + at;
    let count = tail.readUInt16LE(at + 10);
    let cdSize = tail.readUInt32LE(at + 12);
    let cdOffset = tail.readUInt32LE(at + 16);
    const needs64 = count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff;
    const loc = eocdPos >= 20 ? readExact(fd, file, eocdPos - 20, 20, 'the zip64 locator') : undefined;
    if (loc && loc.readUInt32LE(0) === EOCD64_LOC) {
      // zip64 end records (torch writes them always): their values rule, and must agree with the plain ones
      const recPos = u64(loc, 8, file, 'zip64 record offset');
      if (recPos + 56 > eocdPos - 20) throw this.fail(`zip64 record offset ${recPos} is past the end of the archive`, undefined, eocdPos - 20);
      const rec = readExact(fd, file, recPos, 56, 'the zip64 end record');
      if (rec.readUInt32LE(0) !== EOCD64) throw this.fail('bad zip64 end record signature', undefined, recPos);
      const c64 = u64(rec, 32, file, 'entry count'), s64 = u64(rec, 40, file, 'central directory size'), o64 = u64(rec, 48, file, 'central directory offset');
      if ((count !== 0xffff && count !== c64) || (cdSize !== 0xffffffff && cdSize !== s64) || (cdOffset !== 0xffffffff && cdOffset !== o64))
        throw this.fail(`the end records disagree: ${count} entries, ${cdSize} bytes at ${cdOffset} vs zip64 ${c64} entries, ${s64} bytes at ${o64}`, undefined, eocdPos);
      count = c64;
      cdSize = s64;
      cdOffset = o64;
    } else if (needs64) throw this.fail('a zip64 archive without its zip64 locator', undefined, eocdPos);
    if (cdOffset + cdSize > eocdPos) throw this.fail(`the central directory [${cdOffset}, ${cdOffset + cdSize}) extends past its end record at ${eocdPos} (truncated or corrupt)`);
    if (count > MAX_ENTRIES || count * 46 > cdSize) throw this.fail(`${count} entries cannot fit a ${cdSize}-byte central directory`);
    const cd = readExact(fd, file, cdOffset, cdSize, 'the central directory');
    let p = 0;
    for (let i = 0; i < count; ++i) {
      if (p + 46 > cdSize || cd.readUInt32LE(p) !== CDH) throw this.fail(`central directory entry ${i} is malformed`, undefined, cdOffset + p);
      const method = cd.readUInt16LE(p + 10);
      let compressedSize = cd.readUInt32LE(p + 20);
      let size = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28), extraLen = cd.readUInt16LE(p + 30), commentLen = cd.readUInt16LE(p + 32);
      let headerOffset = cd.readUInt32LE(p + 42);
      if (p + 46 + nameLen + extraLen + commentLen > cdSize) throw this.fail(`central directory entry ${i} runs past the directory`, undefined, cdOffset + p);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64 extra field: the 64-bit values of the fields set to 0xffffffff, in order
      let e = p + 46 + nameLen;
      const eEnd = e + extraLen;
      while (e + 4 <= eEnd) {
        const id = cd.readUInt16LE(e), len = cd.readUInt16LE(e + 2);
        if (e + 4 + len > eEnd) break;
        if (id === 0x0001) {
          let q = e + 4;
          const take = (): number => {
            if (q + 8 > e + 4 + len) throw this.fail('zip64 extra field too short', name);
            const v = u64(cd, q, file, 'zip64 field');
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = take();
          if (compressedSize === 0xffffffff) compressedSize = take();
          if (headerOffset === 0xffffffff) headerOffset = take();
        }
        e += 4 + len;
      }
      if (headerOffset + 30 > cdOffset) throw this.fail(`entry header offset ${headerOffset} is past the file data`, name);
      this.entries.set(name, { name, method, compressedSize, size, headerOffset });
      p += 46 + nameLen + extraLen + commentLen;
    }
  }

  /** The entry's data range [start, start + size), checked: stored, inside the file. */
  dataRange(name: string): { start: number; size: number } {
    const e = this.entries.get(name);
    if (!e) throw this.fail('no such entry in the archive', name);
    if (e.method !== 0) throw this.fail(`the entry is compressed (method ${e.method}${e.method === 8 ? ', deflate' : ''}); torch.save stores entries uncompressed and only those are supported`, name);
    if (e.compressedSize !== e.size) throw this.fail(`stored entry sizes disagree (${e.compressedSize} vs ${e.size})`, name);
    const h = readExact(this.fd, this.file, e.headerOffset, 30, `the header of '${name}'`);
    if (h.readUInt32LE(0) !== LFH) throw this.fail('bad local header signature', name, e.headerOffset);
    const start = e.headerOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    if (start + e.size > this.fileSize) throw this.fail(`the entry's ${e.size} bytes at ${start} extend past the end of the file (${this.fileSize} bytes): truncated`, name);
    return { start, size: e.size };
  }
}
