#!/usr/bin/env node
// Builds the addon at `npm install`: cmake-js from CMakeLists.txt when cmake is
// on the PATH, otherwise node-gyp from binding.gyp (CPU only). Both read the
// sources from native/sources.json. TDQ_BUILD=gyp|cmake forces one.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const want = process.env.TDQ_BUILD || (has('cmake', ['--version']) ? 'cmake' : 'gyp');
const jobs = String(require('node:os').availableParallelism?.() ?? 2);

function has(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

// node-gyp: npm's lifecycle variable, a local install, or the copy bundled with npm.
function findNodeGyp() {
  const tries = [process.env.npm_config_node_gyp];
  try {
    tries.push(require.resolve('node-gyp/bin/node-gyp.js'));
  } catch {}
  tries.push(path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return tries.find((p) => p && require('node:fs').existsSync(p));
}

function run(cmd, args, env) {
  console.log(`tdq-native: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.error) return `${cmd} could not be started (${r.error.message})`;
  return r.status === 0 ? null : `${cmd} exited with status ${r.status}`;
}

let err;
if (want === 'cmake') {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const args = [cmakeJs, 'compile', '--parallel', jobs];
  if (process.env.TDQ_CUDA) args.push(`--CDTDQ_CUDA=${process.env.TDQ_CUDA}`);
  err = run(process.execPath, args);
} else if (want === 'gyp') {
  const gyp = findNodeGyp();
  // Offline: build against the headers of the installed Node rather than downloading them.
  const prefix = path.join(path.dirname(process.execPath), '..');
  const nodedir = process.env.npm_config_nodedir || (require('node:fs').existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null);
  const args = ['rebuild', '-j', jobs, ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
  err = gyp ? run(process.execPath, [gyp, ...args], { JOBS: jobs }) : run('node-gyp', args, { JOBS: jobs });
} else {
  err = `TDQ_BUILD must be 'cmake' or 'gyp', got '${want}'`;
}
if (err) {
  console.error(`tdq-native: building the native addon failed: ${err}.\n` +
    'It needs a C++17 compiler and either cmake >= 3.19 (cmake-js) or python3 + make (node-gyp).');
  process.exit(1);
}
