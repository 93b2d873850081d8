import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { removeStaleTemps, writeFileAtomic, writeFileAtomicSync } from '../../src/io/atomic';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-atomic-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const atomicModule = path.resolve(__dirname, '..', '..', 'src', 'io', 'atomic.js');
const CHUNK = 64 * 1024;
const CHUNKS = 200; // 12.5 MiB, written over 2 s or more

const temps = (target: string) =>
  fs.readdirSync(path.dirname(target)).filter((n) => n.startsWith(`.${path.basename(target)}.`) && n.endsWith('.tmp'));

/** A child process that writes `target` slowly through writeFileAtomic; it prints "started" first. */
function slowWriter(target: string) {
  const code = `
    const { writeFileAtomic } = require(${JSON.stringify(atomicModule)});
    writeFileAtomic(${JSON.stringify(target)}, async (w) => {
      process.stdout.write('started\\n');
      for (let i = 0; i < ${CHUNKS}; ++i) {
        await w.write(Buffer.alloc(${CHUNK}, i % 251));
        await new Promise((r) => setTimeout(r, 10));
      }
    }).then(() => process.stdout.write('done\\n'));
  `;
  return spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
}

/** Kills the writer once its temporary file holds at least `bytes`; resolves with the exit signal. */
function killMidWrite(target: string, bytes: number): Promise<{ signal: string | null; sawPartial: number }> {
  return new Promise((resolve, reject) => {
    const child = slowWriter(target);
    let sawPartial = 0;
    const timer = setInterval(() => {
      for (const n of temps(target)) {
        const size = fs.statSync(path.join(path.dirname(target), n), { throwIfNoEntry: false })?.size ?? 0;
        if (size >= bytes && sawPartial === 0) {
          sawPartial = size;
          child.kill('SIGKILL');
        }
      }
    }, 5);
    child.on('exit', (_code, signal) => {
      clearInterval(timer);
      resolve({ signal, sawPartial });
    });
    child.on('error', reject);
  });
}

describe('atomic writes', () => {
  it('writes data and replaces an existing file, keeping its mode', async () => {
    const f = path.join(tmp, 'a.txt');
    await writeFileAtomic(f, 'first');
    assert.equal(fs.readFileSync(f, 'utf8'), 'first');
    fs.chmodSync(f, 0o640);
    await writeFileAtomic(f, Buffer.from('second'));
    assert.equal(fs.readFileSync(f, 'utf8'), 'second');
    assert.equal(fs.statSync(f).mode & 0o777, 0o640);
    writeFileAtomicSync(f, 'third');
    assert.equal(fs.readFileSync(f, 'utf8'), 'third');
    assert.equal(fs.statSync(f).mode & 0o777, 0o640);
    assert.deepEqual(temps(f), []);
  });

  it('streams through a writer callback', async () => {
    const f = path.join(tmp, 'b.bin');
    await writeFileAtomic(f, async (w) => {
      await w.write('abc');
      await w.write(new Uint8Array([100, 101]));
      assert.equal(w.bytesWritten, 5);
    });
    assert.equal(fs.readFileSync(f, 'latin1'), 'abcde');
  });

  it('leaves the target untouched and no temporary when the writer throws', async () => {
    const f = path.join(tmp, 'c.txt');
    fs.writeFileSync(f, 'old');
    await assert.rejects(writeFileAtomic(f, async (w) => {
      await w.write('partial new content');
      throw new Error('writer failed');
    }), /writer failed/);
    assert.equal(fs.readFileSync(f, 'utf8'), 'old');
    assert.deepEqual(temps(f), []);
  });

  it('fails without touching anything when the folder does not exist', async () => {
    await assert.rejects(writeFileAtomic(path.join(tmp, 'no', 'such', 'dir.txt'), 'x'), /ENOENT/);
  });

  it('a process killed mid-write leaves the old file intact', async () => {
    const f = path.join(tmp, 'big-existing.bin');
    const old = Buffer.from('the old, complete content\n'.repeat(100));
    fs.writeFileSync(f, old);
    const r = await killMidWrite(f, 4 * CHUNK);
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(r.sawPartial >= 4 * CHUNK, 'the child was killed while its temporary file was partial');
    assert.ok(fs.readFileSync(f).equals(old), 'the target still holds exactly the old content');
    // The killed writer's temporary is left behind; removeStaleTemps clears it.
    assert.equal(temps(f).length, 1);
    assert.equal(removeStaleTemps(f).length, 1);
    assert.deepEqual(temps(f), []);
  });

  it('a process killed mid-write leaves no file where there was none', async () => {
    const f = path.join(tmp, 'big-new.bin');
    const r = await killMidWrite(f, 2 * CHUNK);
    assert.equal(r.signal, 'SIGKILL');
    assert.equal(fs.existsSync(f), false);
    removeStaleTemps(f);
  });

  it('a writer that is not killed produces the whole file', async () => {
    const f = path.join(tmp, 'big-done.bin');
    fs.writeFileSync(f, 'old');
    const child = slowWriter(f);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    assert.equal(code, 0);
    assert.match(out, /done/);
    const got = fs.readFileSync(f);
    assert.equal(got.length, CHUNK * CHUNKS);
    for (const i of [0, 1, 100, CHUNKS - 1]) assert.equal(got[i * CHUNK + 17], i % 251, `chunk ${i}`);
    assert.deepEqual(temps(f), []);
  });
});
