// The node side of the PyTorch bench servers (bench/torch_ops.py,
// bench/torch_diffusion.py, bench/ldm_churches_torch.py): one python process,
// one JSON request a line on its stdin, one JSON response a line on its stdout,
// answered in order. A response with `error`, or the process exiting, rejects
// the calls still waiting with a message naming the script.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

import { packageRoot } from '../src/tensor/native';

/**
 * OMP_WAIT_POLICY of the server: 'passive' sets PASSIVE (no spin-waiting on a
 * shared machine), 'default' removes it (OpenMP's own default), 'inherit'
 * leaves this process's environment as it is.
 */
export type TorchWaitPolicy = 'passive' | 'default' | 'inherit';

export class TorchServer {
  private pending: ((v: unknown) => void)[] = [];
  private proc: ChildProcessWithoutNullStreams;
  /** Starts bench/`script` with `threads` threads ($TDQ_PYTHON, else /usr/bin/python3). */
  constructor(
    private readonly script: string,
    threads: number,
    waitPolicy: TorchWaitPolicy,
  ) {
    // OpenBLAS (PyTorch's matmul on Debian) takes its thread count from the environment only.
    const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) };
    if (waitPolicy === 'passive') env.OMP_WAIT_POLICY = 'PASSIVE';
    else if (waitPolicy === 'default') delete env.OMP_WAIT_POLICY;
    this.proc = spawn(process.env.TDQ_PYTHON ?? '/usr/bin/python3', [path.join(packageRoot, 'bench', script), String(threads)], { env });
    let stderr = '';
    this.proc.stderr.on('data', (d) => (stderr += d));
    this.proc.on('exit', (code) => {
      for (const p of this.pending.splice(0)) p({ error: `exited with ${code}: ${stderr}` });
    });
    readline.createInterface({ input: this.proc.stdout, crlfDelay: Infinity }).on('line', (l) => this.pending.shift()?.(JSON.parse(l)));
  }
  /** Sends one request; resolves with its response, rejects with the server's error. */
  async call<T>(req: object): Promise<T> {
    const resp = (await new Promise<unknown>((resolve) => {
      this.pending.push(resolve);
      this.proc.stdin.write(JSON.stringify(req) + '\n');
    })) as T & { error?: string };
    if (resp.error) throw new Error(`${this.script}: ${resp.error}`);
    return resp;
  }
  /** Closes its stdin (the server's loop ends) and waits for the process to exit (at once when it has). */
  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.stdin.end();
    await exited;
  }
}
