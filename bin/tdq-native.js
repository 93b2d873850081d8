#!/usr/bin/env node
// The tdq-native command. The CLI itself is compiled TypeScript in dist/.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const entry = path.join(__dirname, '..', 'dist', 'src', 'cli', 'index.js');
if (!fs.existsSync(entry)) {
  process.stderr.write(
    `tdq-native: ${entry} is missing: the TypeScript sources are not compiled. ` +
      `Run 'npm run build:ts' in ${path.resolve(__dirname, '..')}.\n`,
  );
  process.exit(1);
}
require(entry)
  .main(process.argv.slice(2))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`tdq-native: ${e && e.message ? e.message : e}\n`);
      process.exitCode = 1;
    },
  );
