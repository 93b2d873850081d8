// Atomic file replacement: write a temporary file in the target's directory,
// fsync it, rename it over the target, fsync the directory. A crash or kill at
// any point leaves either the old file (or none) or the complete new one,
// never a partial file; a leftover temporary is named .<name>.<pid>.<rand>.tmp.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

export type AtomicData = string | Uint8Array;

/** What an async writer callback gets: sequential writes into the temporary file. */
export interface AtomicWriter {
  /** Appends data at the current end; resolves when the OS has it. */
  write(data: AtomicData): Promise<void>;
  /** Bytes written so far. */
  readonly bytesWritten: number;
}

export interface AtomicOptions {
  /** File mode of a newly created target (default 0o666 before umask; an existing target keeps its mode). */
  mode?: number;
  /** fsync the file and directory (default true). Off only for scratch data. */
  fsync?: boolean;
}

function tempPathFor(target: string): string {
  const dir = path.dirname(target);
  return path.join(dir, `.${path.basename(target)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
}

function toBytes(data: AtomicData): Uint8Array {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
}

async function targetMode(target: string, fallback: number | undefined): Promise<number | undefined> {
  if (fallback !== undefined) return fallback;
  try {
    return (await fsp.stat(target)).mode & 0o7777;
  } catch {
    return undefined;
  }
}

// Some file systems and platforms cannot fsync a directory (EISDIR, EINVAL,
// EPERM, EBADF): the rename is still done, just not forced to disk.
function ignorableDirSyncError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'EISDIR' || code === 'EINVAL' || code === 'EPERM' || code === 'EBADF' || code === 'ENOTSUP';
}

async function fsyncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, 'r');
    await fh.sync();
  } catch (e) {
    if (!ignorableDirSyncError(e)) throw e;
  } finally {
    await fh?.close();
  }
}

/**
 * Replaces `target` with `data`, or with what `writer` writes. If the writer
 * throws, the target is untouched, the temporary removed, and the error rethrown.
 */
export async function writeFileAtomic(
  target: string,
  data: AtomicData | ((w: AtomicWriter) => Promise<void>),
  opts: AtomicOptions = {},
): Promise<void> {
  const sync = opts.fsync ?? true;
  const tmp = tempPathFor(target);
  const mode = await targetMode(target, opts.mode);
  const fh = await fsp.open(tmp, 'wx', mode ?? 0o666);
  let closed = false;
  try {
    if (typeof data === 'function') {
      let written = 0;
      const w: AtomicWriter = {
        async write(chunk: AtomicData) {
          const bytes = toBytes(chunk);
          let off = 0;
          while (off < bytes.length) {
            const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, written);
            off += bytesWritten;
            written += bytesWritten;
          }
        },
        get bytesWritten() {
          return written;
        },
      };
      await data(w);
    } else {
      await fh.writeFile(toBytes(data));
    }
    if (mode !== undefined) await fh.chmod(mode); // the umask applied at open
    if (sync) await fh.sync();
    await fh.close();
    closed = true;
    await fsp.rename(tmp, target);
  } catch (e) {
    if (!closed) await fh.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  if (sync) await fsyncDir(path.dirname(target));
}

/** The synchronous form, for small files and exit paths. */
export function writeFileAtomicSync(target: string, data: AtomicData, opts: AtomicOptions = {}): void {
  const sync = opts.fsync ?? true;
  const tmp = tempPathFor(target);
  let mode = opts.mode;
  if (mode === undefined) {
    try {
      mode = fs.statSync(target).mode & 0o7777;
    } catch {
      mode = undefined;
    }
  }
  const fd = fs.openSync(tmp, 'wx', mode ?? 0o666);
  let closed = false;
  try {
    fs.writeFileSync(fd, toBytes(data));
    if (mode !== undefined) fs.fchmodSync(fd, mode);
    if (sync) fs.fsyncSync(fd);
    fs.closeSync(fd);
    closed = true;
    fs.renameSync(tmp, target);
  } catch (e) {
    if (!closed) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* may not exist */
    }
    throw e;
  }
  if (sync) {
    let dfd: number | undefined;
    try {
      dfd = fs.openSync(path.dirname(target), 'r');
      fs.fsyncSync(dfd);
    } catch (e) {
      if (!ignorableDirSyncError(e)) throw e;
    } finally {
      if (dfd !== undefined) fs.closeSync(dfd);
    }
  }
}

/** Removes temporaries left in `dir` by killed writers of `target` (their pid no longer runs). */
export function removeStaleTemps(target: string): string[] {
  const dir = path.dirname(target);
  const prefix = `.${path.basename(target)}.`;
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const m = /^(\d+)\.[0-9a-f]{8}\.tmp$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    // Our own pid: a write of ours may be in flight.
    if (pid === process.pid || processAlive(pid)) continue;
    try {
      fs.unlinkSync(path.join(dir, name));
      removed.push(path.join(dir, name));
    } catch {
      /* raced with another cleaner */
    }
  }
  return removed;
}

/** How old a temporary must be before it is removed although its pid runs (the pid may have been reused). */
export const STALE_TEMP_AGE_MS = 24 * 3600 * 1000;

// .<name>.<pid>.<8 hex>.tmp: the names tempPathFor and writeSafetensors give.
const TEMP_RE = /^\.(.+)\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes, from `dir` (not below it), the temporaries of interrupted atomic
 * writes: only names of our own pattern (.<name>.<pid>.<hex8>.tmp), and only
 * when their writer is gone (no process with that pid on this machine) or the
 * file is older than `maxAgeMs` (a reused pid). Never a temporary of this
 * process. Returns the removed paths.
 */
export function removeStaleTempFiles(dir: string, opts: { maxAgeMs?: number; now?: number } = {}): string[] {
  const maxAge = opts.maxAgeMs ?? STALE_TEMP_AGE_MS;
  const now = opts.now ?? Date.now();
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = TEMP_RE.exec(name);
    if (!m) continue;
    const pid = Number(m[2]);
    if (pid === process.pid) continue;
    const file = path.join(dir, name);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(file);
    } catch {
      continue;
    }
    if (!st.isFile()) continue;
    if (processAlive(pid) && now - st.mtimeMs < maxAge) continue;
    try {
      fs.unlinkSync(file);
      removed.push(file);
    } catch {
      /* raced with another cleaner */
    }
  }
  return removed;
}

/** Whether a process with this pid runs on this machine (EPERM: it runs, under another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
