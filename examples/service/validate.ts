// Checks the JSON body of POST /generate against the service's limits and the
// model, and names the field and its allowed range in every error.
import { SAMPLERS, type SamplerName, makeDdimTimesteps } from '../../src/diffusion/samplers';
import { HttpError } from './errors';

export interface Limits {
  /** Images per request (1..maxN). */
  maxN: number;
  /** Sampler steps per request (1..maxSteps). */
  maxSteps: number;
  /** Bytes of a request body; more is 413. */
  maxBodyBytes: number;
}

/** What validation needs to know of the loaded model. */
export interface ModelInfo {
  /** Classes of a class-conditional model, else null. */
  numClasses: number | null;
  /** T of the noise schedule: ddpm always runs all T steps. */
  timesteps: number;
}

export type OutputFormat = 'png' | 'json';
export const FORMATS: readonly OutputFormat[] = ['png', 'json'];

export interface GenerateRequest {
  n: number;
  /** undefined only for ddpm, which runs all T steps. */
  steps: number | undefined;
  sampler: SamplerName;
  seed: number;
  class: number | undefined;
  format: OutputFormat;
}

export const DEFAULT_STEPS = 20;
export const MAX_SEED = 2 ** 32 - 1;
const FIELDS = ['n', 'steps', 'sampler', 'seed', 'class', 'format'] as const;

function bad(message: string): HttpError {
  return new HttpError(400, message);
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : String(v);
}

function intField(body: Record<string, unknown>, key: string, lo: number, hi: number, dflt: number): number {
  const v = body[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) throw bad(`${key} must be an integer in ${lo}..${hi}, got ${show(v)}`);
  return v;
}

function enumField<T extends string>(body: Record<string, unknown>, key: string, allowed: readonly T[], dflt: T): T {
  const v = body[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || !allowed.includes(v as T)) throw bad(`${key} must be one of ${allowed.join(', ')}, got ${show(v)}`);
  return v as T;
}

/** The samplers a request may ask for: ddpm only where all T steps fit under maxSteps. */
export function allowedSamplers(limits: Limits, model: ModelInfo): SamplerName[] {
  return SAMPLERS.filter((s) => s !== 'ddpm' || model.timesteps <= limits.maxSteps);
}

/** Parses and checks a request body (raw bytes); throws HttpError 400 naming the problem. */
export function parseGenerateRequest(raw: string, limits: Limits, model: ModelInfo): GenerateRequest {
  let body: unknown;
  try {
    body = raw.trim() === '' ? {} : JSON.parse(raw);
  } catch (e) {
    throw bad(`the request body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad(`the request body must be a JSON object, got ${show(body)}`);
  const o = body as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!(FIELDS as readonly string[]).includes(k)) throw bad(`unknown field ${JSON.stringify(k)} (allowed: ${FIELDS.join(', ')})`);
  const n = intField(o, 'n', 1, limits.maxN, 1);
  const samplers = allowedSamplers(limits, model);
  const sampler = enumField(o, 'sampler', samplers, 'ddim');
  let steps: number | undefined;
  if (sampler === 'ddpm') {
    if (o.steps !== undefined && o.steps !== model.timesteps) throw bad(`steps: ddpm always runs all ${model.timesteps} steps; leave steps out or use ddim, plms or dpmpp`);
  } else {
    steps = intField(o, 'steps', 1, limits.maxSteps, Math.min(DEFAULT_STEPS, limits.maxSteps));
    // ddim and plms pick every (T / steps)-th timestep: not every count fits T. Ask the library.
    if (sampler === 'ddim' || sampler === 'plms') {
      try {
        makeDdimTimesteps('uniform', steps, model.timesteps);
      } catch (e) {
        throw bad(`steps: ${steps} does not fit ${sampler} with T = ${model.timesteps} (${(e as Error).message})`);
      }
    }
  }
  let cls: number | undefined;
  if (o.class !== undefined) {
    if (model.numClasses === null) throw bad('class: this model is not class-conditional; leave class out');
    cls = intField(o, 'class', 0, model.numClasses - 1, 0);
  }
  const seed = intField(o, 'seed', 0, MAX_SEED, 0);
  return { n, steps, sampler, seed, class: cls, format: enumField(o, 'format', FORMATS, 'png') };
}
