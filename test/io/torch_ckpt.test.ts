// Loading torch.save checkpoints (fixtures written by torch 1.13 with
// test/reference/torch_ckpt_fixtures.py): values, dtypes, shared storages and
// views, both container formats, pickle protocols 2-5, Lightning layouts,
// and a hostile pickle that must not run.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import { PyDict, PyGlobal, PyObject, TensorRef, TorchCheckpointError, TorchCheckpointReader, detectTorchFormat, loadTorchCheckpoint } from '../../src/io/torch_ckpt';
import { Unpickler } from '../../src/io/torch_ckpt/pickle';
import { FileSource } from '../../src/io/torch_ckpt/source';
import { P, f32bytes, pkl, storedZip, tensorPickle, torchZip } from '../helpers/torch_ckpt';

const FIX = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'torch');
interface Expected { tensors: Record<string, { dtype: string; shape: number[]; values: number[] }>; [k: string]: unknown }
const EXPECTED = JSON.parse(fs.readFileSync(path.join(FIX, 'expected.json'), 'utf8')) as Record<string, Expected>;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tdq-torchckpt-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const LOADS_AS: Record<string, string> = { float32: 'float32', float16: 'float16', bfloat16: 'float32', float64: 'float32', int64: 'int32', int32: 'int32', int8: 'int8', uint8: 'uint8', bool: 'uint8' };

async function checkFixture(name: string): Promise<void> {
  const ck = await loadTorchCheckpoint(path.join(FIX, name));
  try {
    const exp = EXPECTED[name].tensors;
    for (const [k, e] of Object.entries(exp)) {
      const t = ck.tensors.get(k);
      assert.ok(t, `${name}: tensor '${k}' missing (have ${[...ck.tensors.keys()].join(', ')})`);
      assert.deepEqual([...t.shape], e.shape, `${name}: '${k}' shape`);
      assert.equal(t.dtype, LOADS_AS[e.dtype], `${name}: '${k}' dtype ${e.dtype}`);
      assert.equal(ck.info.get(k)!.dtype, e.dtype);
      const raw = Array.from(t.dataSync());
      const got = t.dtype === 'float16' ? raw.map(halfToFloat) : raw;
      const want = e.dtype === 'float64' ? e.values.map(Math.fround) : e.values;
      assert.deepEqual(got, want, `${name}: '${k}' values`);
    }
  } finally {
    ck.dispose();
  }
}

describe('loadTorchCheckpoint: torch 1.13 fixtures', () => {
  for (const name of ['fp32.pt', 'fp16.pt', 'dtypes.pt', 'views.pt', 'legacy.pt', 'legacy_views.pt', 'proto4.pt', 'proto4_legacy.pt', 'lightning.ckpt', 'whole_module.pt'])
    it(`${name}: every tensor has torch's shape, dtype and values`, () => checkFixture(name));

  it('detectTorchFormat tells zip, legacy and other files apart', async () => {
    assert.equal(await detectTorchFormat(path.join(FIX, 'views.pt')), 'zip');
    assert.equal(await detectTorchFormat(path.join(FIX, 'legacy.pt')), 'legacy');
    assert.equal(await detectTorchFormat(path.join(FIX, 'expected.json')), undefined);
  });

  it('reports the container format', async () => {
    for (const [f, fmt] of [['views.pt', 'zip'], ['legacy.pt', 'legacy']] as const) {
      const ck = await loadTorchCheckpoint(path.join(FIX, f));
      assert.equal(ck.format, fmt);
      ck.dispose();
    }
  });

  it('views share one storage: offsets and strides are kept in the info', async () => {
    const r = await TorchCheckpointReader.open(path.join(FIX, 'views.pt'));
    try {
      const sd = r.root as PyDict;
      const base = sd.get('base') as TensorRef, tr = sd.get('transposed') as TensorRef, sl = sd.get('slice') as TensorRef;
      assert.equal(base.storage, tr.storage);
      assert.equal(base.storage, sl.storage);
      assert.deepEqual(tr.stride, [1, 6]);
      assert.equal(sl.storageOffset, 8);
      assert.equal(r.storages.size, 2); // base's (shared by every view of it, the empty one too) and expand()'s source
    } finally {
      await r.close();
    }
  });

  it('a state dict OrderedDict keeps its _metadata as attrs', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'fp32.pt'));
    const root = ck.root as PyDict;
    assert.equal(root.className, 'collections.OrderedDict');
    assert.ok(root.attrs instanceof PyDict && (root.attrs as PyDict).has('_metadata'));
    ck.dispose();
  });

  it('a whole pickled nn.Module reads as its state_dict(): same names in the same order, no non-persistent buffer', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'whole_module.pt'));
    assert.deepEqual([...ck.tensors.keys()], EXPECTED['whole_module.pt'].state_dict_keys);
    assert.equal(ck.otherTensors, 1); // the non-persistent buffer
    assert.ok(ck.root instanceof PyObject && ck.root.callable === 'torch.nn.modules.container.Sequential');
    ck.dispose();
  });

  it('filter loads only the chosen tensors', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'fp32.pt'), { filter: (n) => n.endsWith('.bias') });
    assert.deepEqual([...ck.tensors.keys()], ['0.bias', '1.bias', '2.bias']);
    ck.dispose();
    assert.equal(ck.tensors.size, 0);
  });
});

describe('loadTorchCheckpoint: Lightning checkpoints', () => {
  it('takes the state dict from state_dict; the rest stays as inert values', async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'));
    try {
      assert.equal(ck.stateDictKey, 'state_dict');
      assert.equal(ck.tensors.size, Object.keys(EXPECTED['lightning.ckpt'].tensors).length);
      const root = ck.root as PyDict;
      assert.equal(root.get('epoch'), 7);
      assert.equal(root.get('global_step'), 1234);
      assert.equal(root.get('pytorch-lightning_version'), '1.4.2');
      const hp = root.get('hyper_parameters');
      assert.ok(hp instanceof PyObject, 'hyper_parameters is an inert object');
      assert.equal(hp.callable, 'argparse.Namespace');
      const state = hp.state as PyDict;
      assert.equal(state.get('lr'), 1e-4);
      assert.equal(state.get('name'), 'ldm-test');
      const opt = (root.get('optimizer_states') as unknown[])[0] as PyDict;
      assert.ok(((opt.get('state') as PyDict).get(0) as PyDict).get('exp_avg') instanceof TensorRef);
      assert.equal(ck.otherTensors, 3);
      assert.deepEqual(ck.dropped, []);
      // a numpy scalar in a callback's state: not called, recorded, and noted quietly (not as code execution)
      const kth = ((root.get('callbacks') as PyDict).get('ModelCheckpoint') as PyDict).get('kth_value');
      assert.ok(kth instanceof PyObject);
      assert.equal(kth.callable, 'numpy.core.multiarray.scalar');
      assert.ok(ck.notes.includes('did not call numpy.core.multiarray.scalar (not on the allowlist); kept as an inert object'), ck.notes.join('\n'));
      assert.ok(!ck.notes.some((n) => /refused/.test(n)));
    } finally {
      ck.dispose();
    }
  });

  it("stateDict: 'root' flattens nested dicts with dots and drops the non-tensors", async () => {
    const ck = await loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'), { stateDict: 'root' });
    try {
      assert.ok(ck.tensors.has('state_dict.model.diffusion_model.out.2.weight'));
      assert.ok(ck.tensors.has('callbacks.ModelCheckpoint.best_model_score'));
      assert.ok(ck.dropped.some((d) => d.startsWith('epoch: 7')));
      assert.ok(ck.dropped.some((d) => d.startsWith('hyper_parameters: <argparse.Namespace')));
    } finally {
      ck.dispose();
    }
  });

  it('strict mode refuses the first construction off the allowlist (numpy.dtype in a callback), naming it', async () => {
    await assert.rejects(loadTorchCheckpoint(path.join(FIX, 'lightning.ckpt'), { strict: true }), (e: Error) => e instanceof TorchCheckpointError && /refusing to call numpy\.dtype/.test(e.message) && e.message.includes('lightning.ckpt'));
  });
});

describe('loadTorchCheckpoint: hostile pickles', () => {
  for (const name of ['hostile.pt', 'hostile_legacy.pt']) {
    const pwned = EXPECTED[name].pwned as string;
    it(`${name}: os.system is never called; the tensor loads and a note names the call`, async () => {
      fs.rmSync(pwned, { force: true });
      const ck = await loadTorchCheckpoint(path.join(FIX, name));
      try {
        assert.equal(fs.existsSync(pwned), false, 'the command ran');
        assert.deepEqual(Array.from(ck.tensors.get('weight')!.dataSync()), [1, 2, 3]);
        assert.equal(ck.tensors.size, 1);
        const evil = (ck.root as PyDict).get('evil');
        assert.ok(evil instanceof PyObject);
        assert.equal(evil.callable, 'posix.system');
        assert.deepEqual(evil.args, [`touch ${pwned}`]);
        assert.ok(ck.notes.some((n) => /refused to call posix\.system/.test(n)), ck.notes.join('\n'));
        assert.deepEqual(ck.dropped, ['evil: <posix.system object>']);
      } finally {
        ck.dispose();
      }
    });
    it(`${name}: strict mode is an error naming posix.system`, async () => {
      await assert.rejects(loadTorchCheckpoint(path.join(FIX, name), { strict: true }), (e: Error) => e instanceof TorchCheckpointError && /refusing to call posix\.system/.test(e.message) && e.message.includes(name));
      assert.equal(fs.existsSync(pwned), false);
    });
  }

  it('builtins.eval, subprocess.Popen and nested calls stay inert', async () => {
    const file = path.join(tmp, 'evil2.pt');
    const call = (m: string, n: string, arg: string) => [...P.global(m, n), ...P.mark, ...P.str(arg), ...P.tuple, ...P.reduce];
    const body = pkl(P.proto(2), P.emptyDict, P.mark,
      P.str('w'), tensorPickle('FloatStorage', '0', 2, 0, [2], [1]),
      P.str('e'), call('builtins', 'eval', '__import__("os").system("touch /tmp/x")'),
      // the result of one refused call used as a callable
      P.str('p'), [...call('subprocess', 'Popen', 'ls'), ...P.mark, ...P.tuple, ...P.reduce],
      P.setitems, P.stop);
    fs.writeFileSync(file, storedZip([['evil2/data.pkl', body], ['evil2/data/0', f32bytes([4, 5])]]));
    const ck = await loadTorchCheckpoint(file);
    assert.deepEqual(Array.from(ck.tensors.get('w')!.dataSync()), [4, 5]);
    const root = ck.root as PyDict;
    assert.equal((root.get('e') as PyObject).callable, 'builtins.eval');
    assert.equal((root.get('p') as PyObject).callable, '<subprocess.Popen object>');
    assert.ok(ck.notes.some((n) => n.includes('builtins.eval')));
    assert.ok(ck.notes.some((n) => n.includes('subprocess.Popen')));
    ck.dispose();
  });

  it('_rebuild_from_type_v2 (tensor subclasses) rebuilds through an allowlisted function only', async () => {
    const inner = tensorPickle('FloatStorage', '0', 2, 0, [2], [1]);
    // inner is GLOBAL _rebuild_tensor_v2, (args), REDUCE: keep the (args) tuple
    const fnAndArgs = inner.slice(0, -1);
    // (fn, type, args, state) built explicitly: MARK fn type args state TUPLE REDUCE
    const args = fnAndArgs.slice(P.global('torch._utils', '_rebuild_tensor_v2').length);
    const body = (fn: number[]) => pkl(P.proto(2), P.emptyDict, P.str('w'),
      P.global('torch._tensor', '_rebuild_from_type_v2'), P.mark, fn, P.global('torch', 'Tensor'), args, P.emptyDict, P.tuple, P.reduce, P.setitem, P.stop);
    const ok = path.join(tmp, 'fromtype.pt');
    fs.writeFileSync(ok, storedZip([['t/data.pkl', body(P.global('torch._utils', '_rebuild_tensor_v2'))], ['t/data/0', f32bytes([3, 4])]]));
    const ck = await loadTorchCheckpoint(ok);
    assert.deepEqual(Array.from(ck.tensors.get('w')!.dataSync()), [3, 4]);
    ck.dispose();
    const bad = path.join(tmp, 'fromtype-bad.pt');
    fs.writeFileSync(bad, storedZip([['t/data.pkl', body(P.global('posix', 'system'))], ['t/data/0', f32bytes([3, 4])]]));
    await assert.rejects(loadTorchCheckpoint(bad), /_rebuild_from_type_v2: expects an allowlisted rebuild function, got posix\.system/);
  });

  it('an unknown global that is only referenced stays a PyGlobal', async () => {
    const file = path.join(tmp, 'glob.pt');
    const body = pkl(P.proto(2), P.emptyDict, P.str('dtype'), P.global('torch', 'float32'), P.setitem, P.stop);
    fs.writeFileSync(file, storedZip([['g/data.pkl', body]]));
    const r = await TorchCheckpointReader.open(file, { strict: true });
    const g = (r.root as PyDict).get('dtype');
    assert.ok(g instanceof PyGlobal && g.qualname === 'torch.float32');
    await r.close();
  });
});

describe('the unpickler: plain values, protocols 2-5', () => {
  for (const proto of [2, 3, 4, 5])
    it(`protocol ${proto}`, () => {
      const file = path.join(FIX, `plain_p${proto}.pkl`);
      const fd = fs.openSync(file, 'r');
      try {
        const v = new Unpickler(new FileSource(fd, file, 0, fs.fstatSync(fd).size, 'pickle'), { file, what: 'pickle' }).load() as PyDict;
        assert.ok(v instanceof PyDict);
        assert.equal(v.get('none'), null);
        assert.equal(v.get('t'), true);
        assert.equal(v.get('f'), false);
        assert.equal(v.get('small'), 7);
        assert.equal(v.get('neg'), -300);
        assert.equal(v.get('i32'), -(2 ** 31));
        assert.equal(v.get('big'), 2n ** 62n + 1n);
        assert.equal(v.get('huge'), -(2n ** 100n));
        assert.equal(v.get('float'), -1.25e-7);
        assert.equal(v.get('str'), 'h\u00e9llo \u2603');
        assert.deepEqual(v.get('bytes'), Uint8Array.from([0, 255, 128, 97, 98]));
        assert.deepEqual(v.get('bytearray'), Uint8Array.from([120, 121, 122]));
        assert.deepEqual(v.get('tuple'), [1, [2, 3], []]);
        assert.ok(Object.isFrozen(v.get('tuple')));
        assert.deepEqual(v.get('list'), [1, [2, [3, []]]]);
        assert.deepEqual([...(v.get('set') as Set<number>)], [3]);
        assert.deepEqual([...(v.get('frozenset') as Set<number>)], [4]);
        assert.deepEqual(((v.get('nested') as PyDict).get('k') as PyDict[])[0].get('deep'), [null]);
        const od = v.get('od') as PyDict;
        assert.equal(od.className, 'collections.OrderedDict');
        assert.deepEqual([...od], [['x', 1], ['y', 2]]);
        assert.equal(v.get(7), 'int key');
      } finally {
        fs.closeSync(fd);
      }
    });
});

describe('loadTorchCheckpoint: bad files are clear errors', () => {
  const write = (name: string, bytes: Uint8Array) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, bytes);
    return f;
  };
  const rejects = (file: string, re: RegExp) =>
    assert.rejects(loadTorchCheckpoint(file), (e: Error) => {
      assert.ok(e instanceof TorchCheckpointError, `${e.name}: ${e.message}`);
      assert.ok(e.message.includes(file), e.message);
      assert.match(e.message, re);
      return true;
    });

  it('a missing file', () => rejects(path.join(tmp, 'nope.pt'), /cannot open/));
  it('not a checkpoint', () => rejects(write('text.pt', Buffer.from('hello world')), /not a PyTorch checkpoint/));
  it('an empty file', () => rejects(write('empty.pt', new Uint8Array(0)), /not a PyTorch checkpoint/));

  it('every truncation of a zip and a legacy checkpoint', async () => {
    for (const src of ['views.pt', 'legacy.pt']) {
      const b = fs.readFileSync(path.join(FIX, src));
      for (let n = 1; n < b.length; n += Math.max(1, Math.floor(b.length / 97))) {
        const f = write(`trunc-${src}`, b.subarray(0, n));
        await assert.rejects(loadTorchCheckpoint(f), (e: Error) => e instanceof TorchCheckpointError && e.message.includes(f), `truncated at ${n}`);
      }
    }
  });

  it('a compressed (deflated) entry', async () => {
    const b = Buffer.from(torchZip([['w', tensorPickle('FloatStorage', '0', 2, 0, [2], [1])]], { '0': f32bytes([1, 2]) }));
    // mark the storage entry deflated in its central directory record
    const cd = b.indexOf(Buffer.from('archive/data/0'), b.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]))) - 46;
    b.writeUInt16LE(8, cd + 10);
    await rejects(write('deflated.pt', b), /archive\/data\/0.*compressed \(method 8, deflate\)/);
  });

  it('a tensor reaching past its storage', () =>
    rejects(write('past.pt', torchZip([['w', tensorPickle('FloatStorage', '0', 4, 2, [2, 2], [2, 1])]], { '0': f32bytes([1, 2, 3, 4]) })), /'w'.*reach element 5 of storage '0', which has 4/));

  it('a storage larger than its entry', () =>
    rejects(write('short.pt', torchZip([['w', tensorPickle('FloatStorage', '0', 1000, 0, [2], [1])]], { '0': f32bytes([1, 2]) })), /needs 4000 bytes, the entry has 8/));

  it('a storage entry that is missing', () =>
    rejects(write('nostorage.pt', torchZip([['w', tensorPickle('FloatStorage', '7', 2, 0, [2], [1])]], {})), /archive\/data\/7.*no such entry/));

  it('an unknown storage type', () =>
    rejects(write('cfloat.pt', torchZip([['w', tensorPickle('ComplexFloatStorage', '0', 2, 0, [2], [1])]], { '0': f32bytes([1, 2]) })), /unsupported storage type torch\.ComplexFloatStorage/));

  it('an int64 value beyond int32', () => {
    const big = new Uint8Array(new BigInt64Array([1n, 2n ** 40n]).buffer);
    return rejects(write('i64.pt', torchZip([['i', tensorPickle('LongStorage', '0', 2, 0, [2], [1])]], { '0': big })), /'i'.*int64 value 1099511627776 at index 1 does not fit int32/);
  });

  it('a huge expanded view', () =>
    rejects(write('expand.pt', torchZip([['w', tensorPickle('FloatStorage', '0', 1, 0, [100000, 100000], [0, 0])]], { '0': f32bytes([1]) })), /more than 2\^31 - 1 elements/));

  it('an expanded view beyond maxExpandedElements, and one within it', async () => {
    const f = write('expand2.pt', torchZip([['w', tensorPickle('FloatStorage', '0', 1, 0, [5000, 5000], [0, 0])]], { '0': f32bytes([1]) }));
    await rejects(f, /'w'.*25000000 elements over a storage span of 1 \(an expanded view\) exceeds the 16777216-element limit/);
    const ck = await loadTorchCheckpoint(f, { maxExpandedElements: 3e7, filter: () => false });
    ck.dispose();
    const small = write('expand3.pt', torchZip([['w', tensorPickle('FloatStorage', '0', 2, 0, [3, 2], [0, 1])]], { '0': f32bytes([1, 2]) }));
    const c2 = await loadTorchCheckpoint(small);
    assert.deepEqual(Array.from(c2.tensors.get('w')!.dataSync()), [1, 2, 1, 2, 1, 2]);
    c2.dispose();
  });

  it('memo and stack limits', async () => {
    const f = path.join(FIX, 'views.pt');
    await assert.rejects(loadTorchCheckpoint(f, { maxMemo: 5 }), /views\.pt: views\/data\.pkl: the memo holds more than 5 entries/);
    await assert.rejects(loadTorchCheckpoint(f, { maxStack: 4 }), /views\.pt: views\/data\.pkl: the stack holds more than 4 values/);
    await assert.rejects(loadTorchCheckpoint(f, { maxMarks: 2 }), /views\.pt: views\/data\.pkl: more than 2 nested MARKs/);
  });

  it('a bad opcode, a stack underflow, a memo miss, an oversized integer', async () => {
    await rejects(write('op.pt', storedZip([['a/data.pkl', pkl(P.proto(2), 0xff)]])), /unknown pickle opcode 0xff/);
    await rejects(write('under.pt', storedZip([['a/data.pkl', pkl(P.proto(2), P.reduce)]])), /stack underflow/);
    await rejects(write('memo.pt', storedZip([['a/data.pkl', pkl(P.proto(2), 0x68, 9, P.stop)]])), /memo index 9 was never stored/);
    await rejects(write('long.pt', storedZip([['a/data.pkl', pkl(P.proto(2), 0x8b, 0xff, 0xff, 0xff, 0x7f)]])), /integer of 2147483647 bytes exceeds/);
    await rejects(write('len.pt', storedZip([['a/data.pkl', pkl(P.proto(2), 0x58, 0xff, 0xff, 0xff, 0xff)]])), /unexpected end of a\/data\.pkl: 4294967295 bytes needed/);
  });

  it('deep nesting: too many marks, and dicts nested past maxDepth', async () => {
    await rejects(write('marks.pt', storedZip([['a/data.pkl', pkl(P.proto(2), new Array(20000).fill(0x28), P.stop)]])), /more than 10000 nested MARKs/);
    const n = 100;
    const deep = pkl(P.proto(2), ...new Array(n).fill(0).flatMap(() => [P.emptyDict, P.str('k')]), P.emptyDict, ...new Array(n).fill(P.setitem), P.stop);
    // the innermost dict holds a dict: all are walked
    const f = write('deep.pt', storedZip([['a/data.pkl', deep]]));
    await assert.rejects(loadTorchCheckpoint(f, { maxDepth: 10 }), /dicts nested deeper than 10/);
  });
});
