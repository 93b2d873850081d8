// Talks to test/oracle/oracle.py (PyTorch on Debian's python3) over JSON lines.
// One process per test file; each op test sends inputs and output gradients
// and compares the engine's forward and backward with PyTorch's.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

export interface Arr {
  shape: number[];
  data: Float32Array | Int32Array | Int8Array | Uint8Array;
}

export interface OracleResult {
  outputs: Arr[];
  grads: Record<string, Arr>;
}

const PYTHON = process.env.TDQ_PYTHON ?? '/usr/bin/python3';
const ORACLE = path.resolve(__dirname, '..', '..', '..', 'test', 'oracle', 'oracle.py');

let probe: string | null | undefined;
/** null when PyTorch is usable, else why not (the tests then skip with this reason). */
export function torchUnavailable(): string | null {
  if (probe !== undefined) return probe;
  const r = spawnSync(PYTHON, ['-c', 'import torch, numpy'], { encoding: 'utf8' });
  probe = r.status === 0 ? null : `PyTorch oracle unavailable (${PYTHON}: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}); install it with: apt-get install python3-torch`;
  if (probe && process.env.CI) throw new Error(probe); // CI installs it: never skip silently there
  return probe;
}

function dtypeOf(a: Arr['data']): string {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Int8Array) return 'int8';
  return 'uint8';
}

function encode(a: Arr) {
  return {
    shape: a.shape,
    dtype: dtypeOf(a.data),
    b64: Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).toString('base64'),
  };
}

function decode(o: { shape: number[]; dtype: string; b64: string }): Arr {
  const buf = Buffer.from(o.b64, 'base64');
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const data =
    o.dtype === 'int32' ? new Int32Array(ab) : o.dtype === 'int8' ? new Int8Array(ab) : o.dtype === 'uint8' ? new Uint8Array(ab) : new Float32Array(ab);
  return { shape: o.shape, data };
}

export class Oracle {
  private pending: ((v: unknown) => void)[] = [];
  private constructor(private proc: ChildProcessWithoutNullStreams, private lines: readline.Interface) {}

  static async start(): Promise<Oracle> {
    const proc = spawn(PYTHON, [ORACLE], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    const lines = readline.createInterface({ input: proc.stdout });
    const o = new Oracle(proc, lines);
    const ready = new Promise<void>((resolve, reject) => {
      o.pending.push(() => resolve());
      proc.on('exit', (code) => reject(new Error(`oracle exited with ${code}: ${stderr}`)));
    });
    lines.on('line', (line) => {
      const cb = o.pending.shift();
      if (cb) cb(JSON.parse(line));
    });
    await ready;
    return o;
  }

  async call(
    op: string,
    inputs: Record<string, Arr | null>,
    attrs: Record<string, unknown> = {},
    opts: { wrt?: string[]; gradOutputs?: (Arr | null)[] } = {},
  ): Promise<OracleResult> {
    const req = {
      op,
      inputs: Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v ? encode(v) : null])),
      attrs,
      wrt: opts.wrt ?? [],
      grad_outputs: opts.gradOutputs ? opts.gradOutputs.map((g) => (g ? encode(g) : null)) : null,
    };
    const resp = (await new Promise<unknown>((resolve) => {
      this.pending.push(resolve);
      this.proc.stdin.write(JSON.stringify(req) + '\n');
    })) as { error?: string; trace?: string; outputs: never[]; grads: Record<string, never> };
    if (resp.error) throw new Error(`oracle ${op}: ${resp.error}\n${resp.trace ?? ''}`);
    return {
      outputs: resp.outputs.map(decode),
      grads: Object.fromEntries(Object.entries(resp.grads).map(([k, v]) => [k, decode(v)])),
    };
  }

  close(): void {
    this.lines.close();
    this.proc.stdin.end();
  }
}
