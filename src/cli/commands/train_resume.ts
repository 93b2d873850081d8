// --resume keeps the run's own settings. A checkpoint stores the config the
// run trained with (model, data and training sections, after its command
// line's --set / --max-steps / ... overrides). Resuming reads the YAML again,
// so without this a run started with `--max-steps 20000` would continue with
// the file's max_steps, checkpoint interval and kept-checkpoint count. As
// upstream LDM's main.py does with the config it saves in the log folder, the
// stored settings win over the file; what this command line sets explicitly
// wins over both. Every key taken from the run is printed.
import { openTensorFile } from '../../io/checkpoint_file';
import { parsePath } from '../../config/load';

/** One setting that differs between the run's checkpoint and the config read now. */
export interface SettingDrift {
  /** Dotted key path, as --set takes it. */
  path: string;
  /** The run's value (undefined: the run's config had no such key). */
  run: unknown;
  /** The value from the YAML and this command line. */
  now: unknown;
}

/** The part of a training config that checkpoints store (pixel, latent and autoencoder subjects alike). */
export function storedPart(config: { model: unknown; data: unknown; training: unknown }): unknown {
  return JSON.parse(JSON.stringify({ model: config.model, data: config.data, training: config.training }));
}

/** The leaf paths where two JSON values differ (objects are walked; arrays and scalars compare whole). */
export function configDrift(run: unknown, now: unknown, prefix: string[] = []): SettingDrift[] {
  if (JSON.stringify(run) === JSON.stringify(now)) return [];
  const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (isMap(run) && isMap(now)) {
    const out: SettingDrift[] = [];
    for (const k of new Set([...Object.keys(run), ...Object.keys(now)])) out.push(...configDrift(run[k], now[k], [...prefix, k]));
    return out;
  }
  return [{ path: prefix.join('.'), run, now }];
}

/** Whether one dotted path lies inside (or contains) another. */
function overlaps(a: string, b: string): boolean {
  return a === b || a.startsWith(`${b}.`) || b.startsWith(`${a}.`);
}

/**
 * The overrides that restore the run's settings: one `path=value` per key whose
 * stored value differs from the config read now, except keys this command line
 * sets (`explicit`, the --set specs and flags) and keys the run did not have
 * (kept, and reported in `added`).
 */
export function runSettingOverrides(run: unknown, now: unknown, explicit: readonly string[]): { overrides: string[]; restored: SettingDrift[]; added: SettingDrift[] } {
  const explicitPaths = explicit.map((s) => s.slice(0, Math.max(0, s.indexOf('='))).trim()).filter((p) => p.length > 0);
  const restored: SettingDrift[] = [];
  const added: SettingDrift[] = [];
  for (const d of configDrift(run, now)) {
    if (explicitPaths.some((p) => overlaps(p, d.path))) continue;
    if (d.run === undefined) added.push(d);
    else restored.push(d);
  }
  // The path syntax must round-trip (a key with a dot in it cannot be set by --set).
  const ok = restored.filter((d) => {
    try {
      return parsePath(d.path).join('.') === d.path;
    } catch {
      return false;
    }
  });
  return { overrides: ok.map((d) => `${d.path}=${JSON.stringify(d.run)}`), restored: ok, added };
}

/** The config JSON stored in a training checkpoint, or null when it has none (an export, a foreign file). */
export async function storedRunConfig(checkpoint: string): Promise<unknown> {
  const f = await openTensorFile(checkpoint);
  try {
    const text = f.metadata.config;
    if (text === undefined) return null;
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new Error(`${checkpoint}: the metadata key 'config' is not JSON (${(e as Error).message}); the file is damaged`);
    }
  } finally {
    await f.close();
  }
}

/** One line per setting, for the console. */
export function describeDrift(d: SettingDrift): string {
  const show = (v: unknown) => (v === undefined ? '(unset)' : JSON.stringify(v));
  return `${d.path} = ${show(d.run)} (the config now says ${show(d.now)})`;
}
