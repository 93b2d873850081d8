// A Python bench server (bench/torch_server.py's protocol: one JSON request
// per line on stdin, one JSON response per line on stdout) as a child process.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

import { packageRoot } from '../src/tensor/native';

export class TorchProcess {
  private pending: ((v: unknown) => void)[] = [];
  private proc: ChildProcessWithoutNullStreams;
  /** bench/<script> with `args`, run by $TDQ_PYTHON (default /usr/bin/python3). */
  constructor(private readonly script: string, args: string[], env: NodeJS.ProcessEnv) {
    this.proc = spawn(process.env.TDQ_PYTHON ?? '/usr/bin/python3', [path.join(packageRoot, 'bench', script), ...args], { env });
    let stderr = '';
    this.proc.stderr.on('data', (d) => (stderr += d));
    this.proc.on('exit', (code) => {
      for (const p of this.pending.splice(0)) p({ error: `${script} exited with ${code}: ${stderr.slice(-4000)}` });
    });
    readline.createInterface({ input: this.proc.stdout }).on('line', (l) => this.pending.shift()?.(JSON.parse(l)));
  }

  /** One request; its {"error"} response (or the process's death) rejects. */
  async call<T>(req: object): Promise<T> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`${this.script} has exited`);
    const resp = (await new Promise<unknown>((resolve) => {
      this.pending.push(resolve);
      this.proc.stdin.write(JSON.stringify(req) + '\n');
    })) as T & { error?: string };
    if (resp.error) throw new Error(`${this.script}: ${resp.error}`);
    return resp;
  }

  /** Ends the server and waits for it (at once when it has died already). */
  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.stdin.end();
    await exited;
  }
}
