// The folder walker and symbolic links: each folder entered once, each file
// counted once, dangling links and link loops skipped with a note.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { ImageFolderDataset, listPngFiles, scanPngFiles } from '../../src/data/image_folder';
import { encodePng } from '../../src/io/png';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-links-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** root/a/{0,1,2}.png and root/b/3.png. */
function tree(name: string): string {
  const root = path.join(tmp, name);
  for (const [sub, i] of [['a', 0], ['a', 1], ['a', 2], ['b', 3]] as const) {
    fs.mkdirSync(path.join(root, sub), { recursive: true });
    fs.writeFileSync(path.join(root, sub, `${i}.png`), encodePng(new Float32Array(16).fill(i / 4), [1, 4, 4]));
  }
  return root;
}

const rel = (root: string, files: string[]) => files.map((f) => path.relative(root, f).split(path.sep).join('/'));
const REAL = ['a/0.png', 'a/1.png', 'a/2.png', 'b/3.png'];

describe('image folder walk with symbolic links', () => {
  it('ln -s . x: each image once, by its real path', () => {
    const root = tree('self');
    fs.symlinkSync('.', path.join(root, 'x'));
    assert.deepEqual(rel(root, listPngFiles(root)), REAL);
    const ds = new ImageFolderDataset({ root, channels: 1, size: 4 });
    assert.equal(ds.length, 4);
    assert.deepEqual(ds.notes, []);
  });

  it('two links to the root and two crossed links: finishes, each image once', () => {
    const root = tree('crossed');
    fs.symlinkSync('.', path.join(root, 'x'));
    fs.symlinkSync('.', path.join(root, 'y'));
    fs.symlinkSync('../b', path.join(root, 'a', 'to-b'));
    fs.symlinkSync('../a', path.join(root, 'b', 'to-a'));
    assert.deepEqual(rel(root, listPngFiles(root)), REAL);
  });

  it('follows a link to a folder outside the root once, and a file linked twice counts once', () => {
    const root = tree('outside');
    const ext = tree('outside-ext');
    fs.symlinkSync(path.join(ext, 'b'), path.join(root, 'ext'));
    fs.symlinkSync(path.join(ext, 'b'), path.join(root, 'ext2'));
    fs.symlinkSync(path.join(root, 'a', '0.png'), path.join(root, 'zero.png'));
    fs.symlinkSync(path.join(ext, 'a', '1.png'), path.join(root, 'one.png'));
    assert.deepEqual(rel(root, listPngFiles(root)), [...REAL, 'ext/3.png', 'one.png']);
  });

  it('skips a dangling link and a loop of links with a note naming them', () => {
    const root = tree('dangling');
    fs.symlinkSync(path.join(tmp, 'nowhere'), path.join(root, 'gone'));
    fs.symlinkSync('loop2', path.join(root, 'loop1'));
    fs.symlinkSync('loop1', path.join(root, 'loop2'));
    const scan = scanPngFiles(root);
    assert.deepEqual(rel(root, scan.files), REAL);
    assert.equal(scan.notes.length, 3, scan.notes.join('\n'));
    assert.match(scan.notes[0], new RegExp(`skipped ${path.join(root, 'gone').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: dangling symbolic link \\(-> .*nowhere: ENOENT\\)`));
    assert.match(scan.notes[1], /loop1: symbolic link in a loop of links \(-> loop2\)/);
    const notes: string[] = [];
    listPngFiles(root, (n) => notes.push(n));
    assert.deepEqual(notes, scan.notes);
    assert.deepEqual(new ImageFolderDataset({ root, channels: 1, size: 4 }).notes, scan.notes);
  });
});
