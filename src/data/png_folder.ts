// A folder of PNG files read whole, for commands that process every image of
// a folder once (reconstruct): the files of listPngFiles, decoded to planar
// [-1, 1] floats with the channels the model takes, all of one size.
import path from 'node:path';

import { type FloatImage, readPng } from '../io/png';
import { DataFileError, reasonOf } from './errors';
import { listPngFiles } from './image_folder';

export interface PngFolderImage extends FloatImage {
  file: string;
  /** The path under the folder ('a/b.png'). */
  relPath: string;
}

/**
 * Every PNG under `dir` (recursively, sorted), converted to `channels`
 * (1: luma, 3: gray replicated). Errors name the file: an empty folder, an
 * unreadable image, or one whose size differs from the first one's.
 */
export function readPngFolder(dir: string, opts: { channels: 1 | 3; onNote?: (note: string) => void }): PngFolderImage[] {
  const files = listPngFiles(dir, opts.onNote);
  if (!files.length) throw new RangeError(`${dir}: no .png files found`);
  const out: PngFolderImage[] = [];
  for (const file of files) {
    let img: FloatImage;
    try {
      img = readPng(file, { channels: opts.channels });
    } catch (e) {
      throw new DataFileError(file, reasonOf(e, file), { cause: e });
    }
    const first = out[0];
    if (first && (img.height !== first.height || img.width !== first.width))
      throw new DataFileError(file, `${img.width}x${img.height} differs from ${first.width}x${first.height} (${first.relPath}); every image must have the same size`);
    out.push({ ...img, file, relPath: path.relative(dir, file) });
  }
  return out;
}
