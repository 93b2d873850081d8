// Run folders: where a run's checkpoints, logs, samples and exported model
// live. A fresh run gets a folder of its own (upstream LDM's
// logs/<%Y-%m-%dT%H-%M-%S>_<name>) and never writes into one that holds
// another run; --resume continues a folder. Temporaries that killed writers
// left in a run folder are removed when the folder is opened again.
import fs from 'node:fs';
import path from 'node:path';

import { removeStaleTempFiles } from '../io/atomic';

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
 * samples/. Returns the removed paths.
 */
export function cleanRunFolder(runDir: string): string[] {
  const removed: string[] = [];
  for (const d of [runDir, path.join(runDir, 'checkpoints'), path.join(runDir, 'samples')]) removed.push(...removeStaleTempFiles(d));
  return removed;
}

/** Throws RunFolderExistsError when `dir` exists and is not empty (after removing stale temporaries). */
export function assertFreshRunFolder(dir: string): void {
  if (!fs.existsSync(dir)) return;
  if (!fs.statSync(dir).isDirectory()) throw new RunFolderExistsError(dir, [path.basename(dir)]);
  cleanRunFolder(dir);
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
