// Builders for hand-made torch checkpoints in tests: a stored zip archive
// (the layout torch.save writes) and a tiny pickle assembler.
import { crc32 } from '../fuzz/helpers';

/** A zip of stored entries, in the given order (name -> bytes). */
export function storedZip(entries: [string, Uint8Array][]): Buffer {
  const locals: Buffer[] = [], central: Buffer[] = [];
  let off = 0;
  for (const [name, data] of entries) {
    const n = Buffer.from(name, 'utf8'), crc = crc32(data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(data.length, 18);
    lh.writeUInt32LE(data.length, 22);
    lh.writeUInt16LE(n.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(data.length, 20);
    ch.writeUInt32LE(data.length, 24);
    ch.writeUInt16LE(n.length, 28);
    ch.writeUInt32LE(off, 42);
    locals.push(lh, n, Buffer.from(data));
    central.push(ch, n);
    off += 30 + n.length + data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(off, 16);
  return Buffer.concat([...locals, cd, end]);
}

/** Pickle opcodes as bytes, for assembling test pickles. */
export const P = {
  proto: (n = 2) => [0x80, n],
  str: (s: string) => {
    const b = Buffer.from(s, 'utf8'), len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return [0x58, ...len, ...b];
  },
  int: (n: number) => (n >= 0 && n < 256 ? [0x4b, n] : (() => { const b = Buffer.alloc(4); b.writeInt32LE(n); return [0x4a, ...b]; })()),
  global: (m: string, n: string) => [0x63, ...Buffer.from(`${m}\n${n}\n`, 'latin1')],
  mark: [0x28],
  tuple: [0x74],
  emptyTuple: [0x29],
  emptyDict: [0x7d],
  emptyList: [0x5d],
  append: [0x61],
  setitem: [0x73],
  setitems: [0x75],
  reduce: [0x52],
  binpersid: [0x51],
  none: [0x4e],
  false: [0x89],
  stop: [0x2e],
};

export function pkl(...parts: (number[] | number)[]): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => (typeof p === 'number' ? [p] : p)));
}

/** The pickle of _rebuild_tensor_v2(storage(key, dtype, numel), offset, size, stride) (no memo). */
export function tensorPickle(storageType: string, key: string, numel: number, offset: number, size: number[], stride: number[]): number[] {
  const tup = (xs: number[]) => [...P.mark, ...xs.flatMap(P.int), ...P.tuple];
  return [
    ...P.global('torch._utils', '_rebuild_tensor_v2'),
    ...P.mark,
    ...P.mark, ...P.str('storage'), ...P.global('torch', storageType), ...P.str(key), ...P.str('cpu'), ...P.int(numel), ...P.tuple, ...P.binpersid,
    ...P.int(offset), ...tup(size), ...tup(stride), ...P.false,
    ...P.global('collections', 'OrderedDict'), ...P.emptyTuple, ...P.reduce,
    ...P.tuple, ...P.reduce,
  ];
}

/** A zip checkpoint {name: tensor} with the given storages. */
export function torchZip(tensors: [string, number[]][], storages: Record<string, Uint8Array>, prefix = 'archive'): Buffer {
  const body = pkl(P.proto(2), P.emptyDict, P.mark, ...tensors.flatMap(([name, t]) => [P.str(name), t]), P.setitems, P.stop);
  return storedZip([[`${prefix}/data.pkl`, body], ...Object.entries(storages).map(([k, v]) => [`${prefix}/data/${k}`, v] as [string, Uint8Array]), [`${prefix}/version`, Buffer.from('3\n')]]);
}

export function f32bytes(xs: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(xs).buffer);
}
