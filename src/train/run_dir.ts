// Run folders: where a run's checkpoints, logs, samples and exported model
// live. A fresh run gets a folder of its own (upstream LDM's
// logs/<%Y-%m-%dT%H-%M-%S>_<name>) and never writes into one that holds
// another run; --resume continues a folder. A training process holds the
// folder's .lock (its pid) so that two processes never write one run.
// Temporaries that killed writers left, and the lock of a killed process, are
// removed when the folder is opened again.
import fs from 'node:fs';
import path from 'node:path';

import { processAlive, removeStaleTempFiles } from '../io/atomic';

/** A fresh run was pointed at a folder that already holds files. */
export class RunFolderExistsError extends Error {
  constructor(readonly dir: string, readonly entries: string[]) {
    const shown = entries.slice(0, 4).join(', ') + (entries.length > 4 ? `, ... (${entries.length} entries)` : '');
    super(
      `run folder ${dir} already holds a run (${shown}). ` +
        `To continue it: --resume ${dir}. To start a fresh run: give another --name, or leave --name out for a new timestamped folder, ` +
        `or remove ${dir} first.`,
    );
    this.name = 'RunFolderExistsError';
  }
}

/** Another live process is training in this run folder. */
export class RunFolderBusyError extends Error {
  constructor(readonly dir: string, readonly pid: number) {
    super(`run folder ${dir} is in use by process ${pid} (${path.join(dir, LOCK_NAME)}); wait for it or stop it first (if that pid is no longer a training run, delete the lock file)`);
    this.name = 'RunFolderBusyError';
  }
}

export const LOCK_NAME = '.lock';

function lockOwner(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

// A lock whose process is gone (killed), or that holds no pid (cut by a kill while written).
function removeStaleLock(dir: string): string[] {
  const file = path.join(dir, LOCK_NAME);
  if (!fs.existsSync(file)) return [];
  const pid = lockOwner(file);
  if (pid !== null && (pid === process.pid || processAlive(pid))) return [];
  fs.rmSync(file, { force: true });
  return [file];
}

/**
 * Takes the run folder's lock (created exclusively, holding our pid); a lock
 * of a process that is gone is taken over. Returns the release function.
 * Throws RunFolderBusyError while another live process (or this one) holds it.
 */
export function lockRunFolder(dir: string): () => void {
  const file = path.join(dir, LOCK_NAME);
  for (let attempt = 0; ; ++attempt) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = lockOwner(file);
      if (attempt > 0 || (pid !== null && (pid === process.pid || processAlive(pid)))) throw new RunFolderBusyError(dir, pid ?? NaN);
      removeStaleLock(dir);
    }
  }
  return () => {
    if (lockOwner(file) === process.pid) fs.rmSync(file, { force: true });
  };
}

/** Local time as upstream's main.py names runs: %Y-%m-%dT%H-%M-%S. */
export function runTimestamp(d: Date = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}-${p(d.getMinutes())}-${p(d.getSeconds())}`;
}

/** The folder of a fresh run without an explicit name: <logdir>/<timestamp>_<name>. */
export function timestampedRunDir(logdir: string, name: string, d: Date = new Date()): string {
  return path.join(logdir, `${runTimestamp(d)}_${name}`);
}

/**
 * Removes the temporaries of interrupted checkpoint / log / sample writes
 * (see removeStaleTempFiles) from a run folder and its checkpoints/ and
 * samples/, and the lock of a process that is gone. Returns the removed paths.
 */
export function cleanRunFolder(runDir: string): string[] {
  const removed: string[] = removeStaleLock(runDir);
  for (const d of [runDir, path.join(runDir, 'checkpoints'), path.join(runDir, 'samples')]) removed.push(...removeStaleTempFiles(d));
  return removed;
}

/**
 * Throws RunFolderExistsError when `dir` exists and holds a file. Nothing is
 * removed from it: it may not be a run folder of ours.
 */
export function assertFreshRunFolder(dir: string): void {
  if (!fs.existsSync(dir)) return;
  if (!fs.statSync(dir).isDirectory()) throw new RunFolderExistsError(dir, [path.basename(dir)]);
  const walk = (d: string, prefix: string): string[] =>
    fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]));
  // Empty subfolders (e.g. checkpoints/ of a run stopped before its first step) hold nothing.
  const entries = walk(dir, '').sort();
  if (entries.length) throw new RunFolderExistsError(dir, entries);
}

/**
 * The run folder a checkpoint belongs to: <run>/checkpoints/step-N.safetensors
 * gives <run>; a file anywhere else belongs to no run folder (null).
 */
export function runFolderOfCheckpoint(file: string): string | null {
  const dir = path.dirname(path.resolve(file));
  return path.basename(dir) === 'checkpoints' ? path.dirname(dir) : null;
}
