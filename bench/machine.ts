// What the bench reports say of the machine they ran on.
import { execFileSync } from 'node:child_process';

/** A field of `lscpu` ("Model name", "L2 cache", ...), '?' when lscpu or the field is missing. */
export function lscpu(field: string): string {
  try {
    const line = execFileSync('lscpu', { encoding: 'utf8' }).split('\n').find((l) => l.startsWith(`${field}:`));
    return line ? line.slice(field.length + 1).trim() : '?';
  } catch {
    return '?';
  }
}
