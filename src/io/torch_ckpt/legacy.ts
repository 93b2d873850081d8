// The legacy torch.save format (PyTorch < 1.6, or _use_new_zipfile_serialization=False):
//   pickle  the magic number 0x1950a86a20f9469cfc6c
//   pickle  the protocol version 1001
//   pickle  sys_info {protocol_version, little_endian, type_sizes}
//   pickle  the object; storages are persistent ids ('storage', type, key, location, numel, view)
//   pickle  the list of storage keys, in the order their bytes follow
//   then, per key: int64 element count, then the raw little-endian elements.
// Storage bytes are located here (offsets only); nothing is read until asked.
import fs from 'node:fs';

import { TorchCheckpointError } from './errors';
import { PyDict, type UnpickleOptions, Unpickler, describeValue } from './pickle';
import { FileSource } from './source';
import { type StorageRef, TORCH_DTYPE_SIZE, findTorchGlobal, storageFromPid } from './tensor_ref';

const MAGIC = 0x1950a86a20f9469cfc6cn;
const PROTOCOL_VERSION = 1001;

export type PickleOpts = Omit<UnpickleOptions, 'file' | 'what' | 'findGlobal' | 'persistentLoad'>;

export function readLegacy(fd: number, file: string, fileSize: number, storages: Map<string, StorageRef>, opts: PickleOpts): unknown {
  const src = new FileSource(fd, file, 0, fileSize, 'the legacy checkpoint header');
  const small = (what: string) => new Unpickler(src, { ...opts, file, what, maxMemo: 1000 }).load();
  const magic = small('the magic number');
  if (magic !== MAGIC) throw new TorchCheckpointError(file, `not a PyTorch checkpoint: the magic number is ${describeValue(magic)}`);
  const version = small('the protocol version');
  if (version !== PROTOCOL_VERSION) throw new TorchCheckpointError(file, `unsupported legacy protocol version ${describeValue(version)} (expected ${PROTOCOL_VERSION})`);
  const sysInfo = small('sys_info');
  if (!(sysInfo instanceof PyDict)) throw new TorchCheckpointError(file, `sys_info is ${describeValue(sysInfo)}, not a dict`);
  if (sysInfo.get('little_endian') === false) throw new TorchCheckpointError(file, 'the checkpoint was written on a big-endian machine; not supported');

  const root = new Unpickler(src, {
    ...opts, file, what: 'the pickled object',
    findGlobal: findTorchGlobal,
    persistentLoad: (pid, fail) => storageFromPid(pid, storages, fail),
  }).load();
  const keys = new Unpickler(src, { ...opts, file, what: 'the storage key list' }).load();
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) throw new TorchCheckpointError(file, `the storage key list is ${describeValue(keys)}, not a list of strings`);

  let pos = src.pos;
  const head = Buffer.alloc(8);
  for (const key of keys as string[]) {
    const s = storages.get(key);
    if (!s || s.viewOf) throw new TorchCheckpointError(file, 'the storage key list names a storage the object does not use', key, pos);
    if (pos + 8 > fileSize) throw new TorchCheckpointError(file, `the file ends before storage '${key}' (truncated)`, undefined, pos);
    if (fs.readSync(fd, head, 0, 8, pos) !== 8) throw new TorchCheckpointError(file, `the file ends before storage '${key}' (truncated)`, undefined, pos);
    const n = head.readBigInt64LE(0);
    if (n !== BigInt(s.numel)) throw new TorchCheckpointError(file, `storage '${key}' is recorded with ${n} elements, but the object says ${s.numel}`, undefined, pos);
    s.start = pos + 8;
    pos = s.start + s.nbytes;
    if (pos > fileSize) throw new TorchCheckpointError(file, `storage '${key}' (${s.nbytes} bytes at ${s.start}) extends past the end of the file (${fileSize} bytes): truncated`);
  }
  for (const s of storages.values()) {
    if (!s.viewOf) continue;
    const base = storages.get(s.viewOf.key);
    if (!base || base.start < 0) continue;
    if (s.viewOf.offset + s.numel > base.numel) throw new TorchCheckpointError(file, `storage view '${s.key}' [${s.viewOf.offset}, +${s.numel}) is outside storage '${base.key}' of ${base.numel} elements`);
    s.start = base.start + s.viewOf.offset * TORCH_DTYPE_SIZE[s.dtype];
  }
  return root;
}
