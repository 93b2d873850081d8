// `tdq-native info`: what the native engine offers on this machine.
import os from 'node:os';
import type { CommandModule } from 'yargs';

import { type CudaProbe, probeCuda } from '../../tensor/device';
import { type EngineInfo, native } from '../../tensor/native';
// A cycle with index.ts, harmless: packageVersion is only read when the handler runs.
import { type GlobalArgs, packageVersion } from '../index';

interface InfoArgs extends GlobalArgs {
  json: boolean;
}

function cudaLine(c: EngineInfo['cuda']): string {
  if (c.available) return 'available';
  return `${c.built ? 'built but unavailable' : 'not built'}${c.reason ? `: ${c.reason}` : ''}`;
}

/** Words filled into lines of at most `width` characters after `indent`. */
function wrap(words: readonly string[], indent: string, width = 80): string {
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && indent.length + line.length + 1 + w.length > width) {
      lines.push(indent + line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(indent + line);
  return lines.join('\n');
}

/** What --device auto picks, from the child-process probe. */
function autoLine(p: CudaProbe): string {
  return `device auto: ${p.available ? 'cuda' : `cpu (${p.reason})`}${p.cached ? ' [cached probe]' : ''}`;
}

export function formatInfo(info: EngineInfo, version: string, probe?: CudaProbe): string {
  const features = Object.entries(info.cpuFeatures).filter(([, on]) => on).map(([f]) => f);
  const ops = [...info.ops].sort((a, b) => (a.name < b.name ? -1 : 1));
  const cudaOps = ops.filter((o) => o.cuda).length;
  return [
    `tdq-native ${version}`,
    `node ${process.version} (${process.platform} ${process.arch}), N-API ${process.versions.napi ?? '?'}`,
    `cpu: ${os.cpus()[0]?.model?.trim() ?? 'unknown'}, ${os.cpus().length} logical cores`,
    `cpu level: ${info.cpuLevel} (best available: ${info.bestCpuLevel})`,
    `cpu features: ${features.length ? features.join(' ') : 'none beyond the baseline'}`,
    `int8 kernel: ${info.int8Kernel}`,
    `threads: ${info.threads}`,
    `cuda: ${cudaLine(info.cuda)}`,
    ...(info.cuda.buildInfo ? [`cuda build: ${info.cuda.buildInfo}`] : []),
    ...(info.cuda.libraries ? [`cuda libraries: ${info.cuda.libraries}`] : []),
    ...(info.cuda.options ? [`cuda options: ${Object.entries(info.cuda.options).map(([k, v]) => `${k}=${v}`).join(' ')}`] : []),
    ...(probe ? [autoLine(probe)] : []),
    `mpi: ${info.mpi ? 'built in: data-parallel with --nproc N or mpirun -np N' : 'not built (apt-get install libopenmpi-dev openmpi-bin, then npm run build:native)'}`,
    `ops: ${ops.length} (${ops.filter((o) => o.cpu).length} on cpu, ${cudaOps} on cuda${cudaOps ? ', marked *' : ''})`,
    wrap(ops.map((o) => (o.cuda ? `${o.name}*` : o.name)), '  '),
  ].join('\n');
}

export const infoCommand: CommandModule<GlobalArgs, InfoArgs> = {
  command: 'info',
  describe: 'Show the native engine: CPU features and level, threads, ops, CUDA status, version',
  builder: (y) => y.option('json', { type: 'boolean', default: false, describe: 'Print the engine info as JSON' }),
  handler: async (args) => {
    // The child-process probe first: should CUDA hang or crash, it does so there.
    const probe = probeCuda();
    const info = native().info();
    const auto = { device: probe.available ? 'cuda' : 'cpu', reason: probe.reason, cached: probe.cached };
    if (args.json) {
      process.stdout.write(JSON.stringify({ version: packageVersion(), node: process.version, ...info, autoDevice: auto }, null, 2) + '\n');
    } else {
      process.stdout.write(formatInfo(info, packageVersion(), probe) + '\n');
    }
  },
};
