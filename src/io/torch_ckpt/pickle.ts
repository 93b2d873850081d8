// A Python unpickler that never executes code. It reads protocols 0-5 as far
// as torch.save needs (the binary opcodes of protocol 2 and later, the common
// text ones), and builds plain JavaScript values:
//   None -> null, bool -> boolean, int -> number (bigint beyond 2^53),
//   float -> number, str -> string, bytes/bytearray -> Uint8Array,
//   tuple -> frozen array, list -> array, dict -> PyDict (a Map),
//   set/frozenset -> Set.
// GLOBAL/STACK_GLOBAL are looked up in an allowlist (the caller's, plus a few
// builtins below); a name not on it becomes an inert PyGlobal. Calling one
// (REDUCE, NEWOBJ, INST, OBJ) calls nothing: the result is an inert PyObject
// recording the callable's name and arguments, and a note is kept (or, when
// strict, a TorchCheckpointError naming the callable is thrown). BUILD,
// SETITEMS and APPENDS on such an object only record their arguments.
// Every length is checked against what is left of the input; the memo, the
// stack, open marks and integer sizes are bounded.
import { TorchCheckpointError } from './errors';
import type { FileSource } from './source';

/** A name the pickle referred to that is not on the allowlist. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An object the pickle asked to construct: nothing was called; its recipe is kept. */
export class PyObject {
  /** The state BUILD gave it (usually its __dict__). */
  state: unknown = undefined;
  /** Items SETITEM(S) gave it (a dict subclass). */
  readonly dictItems: [unknown, unknown][] = [];
  /** Items APPEND(S) gave it (a list subclass). */
  readonly listItems: unknown[] = [];
  constructor(readonly callable: string, readonly args: readonly unknown[], readonly how: 'reduce' | 'newobj' | 'inst') {}
}

/** A dict (or OrderedDict: className says which). BUILD state, such as a state dict's _metadata, goes in attrs. */
export class PyDict extends Map<unknown, unknown> {
  className = 'dict';
  attrs: unknown = undefined;
}

/** An allowlisted callable: builds a plain value from its arguments (never runs Python code). */
export interface Callable {
  readonly qualname: string;
  call(args: readonly unknown[], fail: (msg: string) => TorchCheckpointError): unknown;
}

export interface PickleLimits {
  /** Memo entries (default 4,000,000). */
  maxMemo?: number;
  /** Values on the stack, marks included (default 4,000,000). */
  maxStack?: number;
  /** Open marks at once, i.e. nesting of MARK-built containers (default 10,000). */
  maxMarks?: number;
  /** Bytes of one LONG1/LONG4 integer (default 1024). */
  maxLongBytes?: number;
}

export interface UnpickleOptions extends PickleLimits {
  file: string;
  /** What is being read, for messages ('data.pkl'). */
  what: string;
  /** The allowlist: a Callable for allowed names, undefined otherwise. */
  findGlobal?(module: string, name: string): Callable | undefined;
  persistentLoad?(pid: unknown, fail: (msg: string) => TorchCheckpointError): unknown;
  /** A call to a name not on the allowlist is an error (default: an inert PyObject and a note). */
  strict?: boolean;
  /** Where notes go (calls not made, and the like). */
  note?(msg: string): void;
}

/** Modules whose callables can run code or touch the system: named loudly in notes. */
const DANGEROUS = /^(os|posix|nt|subprocess|sys|shutil|socket|builtins\.(eval|exec|compile|open|getattr|setattr|delattr|__import__|input|breakpoint)|__builtin__\.(eval|exec|compile|open|getattr|__import__)|importlib|runpy|pty|code|ctypes|webbrowser|pickle|marshal|_pickle|multiprocessing|asyncio|signal|tempfile|pathlib|io|codecs\.open|operator\.(attrgetter|methodcaller))(\.|$)/;

export function isDangerous(qualname: string): boolean {
  return DANGEROUS.test(qualname);
}

const MARK = Symbol('mark');

const utf8 = new TextDecoder('utf-8');
/** Bytes as code points 0-255 (TextDecoder's 'latin1' is really windows-1252). */
function latin1Decode(b: Uint8Array): string {
  let out = '';
  for (let i = 0; i < b.length; i += 8192) out += String.fromCharCode(...b.subarray(i, i + 8192));
  return out;
}

function leInt(b: Uint8Array): bigint {
  let v = 0n;
  for (let i = b.length - 1; i >= 0; --i) v = (v << 8n) | BigInt(b[i]);
  if (b.length && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v;
}

function intValue(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** A short description of a value for messages. */
export function describeValue(v: unknown): string {
  if (v === null) return 'None';
  if (v instanceof PyGlobal) return v.qualname;
  if (v instanceof PyObject) return `<${v.callable} object>`;
  if (v instanceof PyDict) return `${v.className} of ${v.size}`;
  if (Array.isArray(v)) return `${Object.isFrozen(v) ? 'tuple' : 'list'} of ${v.length}`;
  if (v instanceof Uint8Array) return `bytes of ${v.length}`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'object' && 'qualname' in (v as object)) return String((v as { qualname: unknown }).qualname);
  if (typeof v === 'object' && 'storage' in (v as object) && 'shape' in (v as object)) return `tensor of shape [${String((v as { shape: unknown }).shape)}]`;
  if (v instanceof Set) return `set of ${v.size}`;
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return String(v);
}

/** collections.OrderedDict and the builtins protocol 2 uses for sets and bytes. */
const BUILTINS: Record<string, Callable> = {};
function builtin(qualname: string, call: Callable['call']): void {
  BUILTINS[qualname] = { qualname, call };
}
function pairsInto(d: PyDict, it: unknown, fail: (m: string) => TorchCheckpointError): PyDict {
  if (it === undefined) return d;
  if (!Array.isArray(it)) throw fail(`expects a list of pairs, got ${describeValue(it)}`);
  for (const p of it) {
    if (!Array.isArray(p) || p.length !== 2) throw fail(`expects (key, value) pairs, got ${describeValue(p)}`);
    d.set(p[0], p[1]);
  }
  return d;
}
builtin('collections.OrderedDict', (args, fail) => {
  const d = new PyDict();
  d.className = 'collections.OrderedDict';
  return pairsInto(d, args[0], fail);
});
builtin('builtins.dict', (args, fail) => pairsInto(new PyDict(), args[0], fail));
for (const n of ['builtins.set', 'builtins.frozenset'])
  builtin(n, (args, fail) => {
    if (args[0] !== undefined && !Array.isArray(args[0])) throw fail(`expects a list, got ${describeValue(args[0])}`);
    return new Set((args[0] as unknown[] | undefined) ?? []);
  });
builtin('builtins.bytearray', (args, fail) => {
  const a = args[0];
  if (a === undefined) return new Uint8Array(0);
  if (a instanceof Uint8Array) return a.slice();
  if (typeof a === 'string' && args[1] === 'latin-1') return Uint8Array.from(a, (c) => c.charCodeAt(0) & 0xff);
  throw fail(`unsupported arguments (${args.map(describeValue).join(', ')})`);
});
builtin('_codecs.encode', (args, fail) => {
  // protocol 2 writes bytes as _codecs.encode(str, 'latin1')
  const [s, enc] = args;
  if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1')) throw fail(`only _codecs.encode(str, 'latin1') is supported, got (${args.map(describeValue).join(', ')})`);
  return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
});

export class Unpickler {
  private stack: unknown[] = [];
  private marks: number[] = [];
  private memo = new Map<number, unknown>();
  private readonly maxMemo: number;
  private readonly maxStack: number;
  private readonly maxMarks: number;
  private readonly maxLongBytes: number;
  private opPos = 0;

  constructor(private readonly src: FileSource, private readonly opts: UnpickleOptions) {
    this.maxMemo = opts.maxMemo ?? 4_000_000;
    this.maxStack = opts.maxStack ?? 4_000_000;
    this.maxMarks = opts.maxMarks ?? 10_000;
    this.maxLongBytes = opts.maxLongBytes ?? 1024;
  }

  private fail = (msg: string): TorchCheckpointError => new TorchCheckpointError(this.opts.file, `${this.opts.what}: ${msg}`, undefined, this.opPos);

  private push(v: unknown): void {
    if (this.stack.length >= this.maxStack) throw this.fail(`the stack holds more than ${this.maxStack} values`);
    this.stack.push(v);
  }

  private pop(): unknown {
    if (this.stack.length === 0 || (this.marks.length && this.stack.length <= this.marks[this.marks.length - 1])) throw this.fail('stack underflow (a malformed pickle)');
    return this.stack.pop();
  }

  private top(): unknown {
    if (this.stack.length === 0 || (this.marks.length && this.stack.length <= this.marks[this.marks.length - 1])) throw this.fail('stack underflow (a malformed pickle)');
    return this.stack[this.stack.length - 1];
  }

  private popMark(): unknown[] {
    const m = this.marks.pop();
    if (m === undefined) throw this.fail('no MARK to pop to (a malformed pickle)');
    return this.stack.splice(m);
  }

  private memoPut(i: number): void {
    if (!(i >= 0)) throw this.fail(`negative memo index ${i}`);
    if (!this.memo.has(i) && this.memo.size >= this.maxMemo) throw this.fail(`the memo holds more than ${this.maxMemo} entries`);
    this.memo.set(i, this.top());
  }

  private memoGet(i: number): void {
    if (!this.memo.has(i)) throw this.fail(`memo index ${i} was never stored`);
    this.push(this.memo.get(i));
  }

  private u32(): number {
    const b = this.src.bytes(4);
    return (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
  }

  private u64(): number {
    const lo = this.u32(), hi = this.u32();
    if (hi >= 0x200000) throw this.fail(`a length of ${hi * 2 ** 32 + lo} bytes is impossible`);
    return hi * 2 ** 32 + lo;
  }

  private text(maxLen = 4096): string {
    return latin1Decode(this.src.line(maxLen));
  }

  private global(module: string, name: string): unknown {
    // Python 2 names, as Python's own fix_imports maps them on load
    if (module === '__builtin__') module = 'builtins';
    else if (module === 'copy_reg') module = 'copyreg';
    if (!/^[A-Za-z_][\w.]*$/.test(module) || !/^[A-Za-z_][\w.]*$/.test(name)) throw this.fail(`invalid global name ${JSON.stringify(`${module} ${name}`.slice(0, 80))}`);
    return this.opts.findGlobal?.(module, name) ?? BUILTINS[`${module}.${name}`] ?? new PyGlobal(module, name);
  }

  /** A call of `fn` with `args` (REDUCE, NEWOBJ and friends). */
  private call(fn: unknown, args: unknown, how: PyObject['how']): unknown {
    if (!Array.isArray(args)) throw this.fail(`call arguments must be a tuple, got ${describeValue(args)}`);
    if (fn && typeof fn === 'object' && 'call' in fn && 'qualname' in fn && !(fn instanceof PyGlobal)) {
      const c = fn as Callable;
      return c.call(args, (msg) => this.fail(`${c.qualname}: ${msg}`));
    }
    const name = fn instanceof PyGlobal ? fn.qualname : describeValue(fn);
    if (this.opts.strict) throw this.fail(`refusing to call ${name} (not on the allowlist; strict mode)`);
    if (how === 'reduce' || how === 'inst') this.opts.note?.(isDangerous(name) ? `refused to call ${name}${args.length ? `(${args.slice(0, 4).map(describeValue).join(', ')}${args.length > 4 ? ', ...' : ''})` : ''}: code execution blocked; kept as an inert object` : `did not call ${name} (not on the allowlist); kept as an inert object`);
    return new PyObject(name, args, how);
  }

  /** Runs to STOP and returns the value. */
  load(): unknown {
    const s = this.src;
    for (;;) {
      this.opPos = s.pos;
      const op = s.byte();
      switch (op) {
        case 0x80: { // PROTO
          const p = s.byte();
          if (p > 5) throw this.fail(`unsupported pickle protocol ${p}`);
          break;
        }
        case 0x95: { // FRAME
          const n = this.u64();
          if (n > s.remaining) throw this.fail(`a frame of ${n} bytes is longer than the ${s.remaining} bytes left`);
          break;
        }
        case 0x2e: // STOP
          {
            const v = this.pop();
            if (this.stack.length || this.marks.length) throw this.fail('values left on the stack at STOP');
            return v;
          }
        case 0x28: // MARK
          if (this.marks.length >= this.maxMarks) throw this.fail(`more than ${this.maxMarks} nested MARKs`);
          this.marks.push(this.stack.length);
          break;
        case 0x30: this.pop(); break; // POP
        case 0x31: this.popMark(); break; // POP_MARK
        case 0x32: this.push(this.top()); break; // DUP
        case 0x4e: this.push(null); break; // NONE
        case 0x88: this.push(true); break; // NEWTRUE
        case 0x89: this.push(false); break; // NEWFALSE
        case 0x4b: this.push(s.byte()); break; // BININT1
        case 0x4d: { const b = s.bytes(2); this.push(b[0] | (b[1] << 8)); break; } // BININT2
        case 0x4a: { const b = s.bytes(4); this.push(b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)); break; } // BININT
        case 0x8a: case 0x8b: { // LONG1, LONG4
          const n = op === 0x8a ? s.byte() : this.u32();
          if (n > this.maxLongBytes) throw this.fail(`an integer of ${n} bytes exceeds the ${this.maxLongBytes}-byte limit`);
          this.push(intValue(leInt(s.bytes(n))));
          break;
        }
        case 0x47: { const b = s.bytes(8); this.push(Buffer.from(b).readDoubleBE(0)); break; } // BINFLOAT
        case 0x49: { // INT (text)
          const t = this.text(64);
          if (t === '01') this.push(true);
          else if (t === '00') this.push(false);
          else if (/^[+-]?\d+$/.test(t)) this.push(intValue(BigInt(t)));
          else throw this.fail(`bad INT ${JSON.stringify(t)}`);
          break;
        }
        case 0x4c: { // LONG (text)
          const t = this.text(this.maxLongBytes * 3).replace(/L$/, '');
          if (!/^[+-]?\d+$/.test(t)) throw this.fail(`bad LONG ${JSON.stringify(t.slice(0, 40))}`);
          this.push(intValue(BigInt(t)));
          break;
        }
        case 0x46: { // FLOAT (text)
          const t = this.text(64), v = Number(t);
          if (t.trim() === '' || (Number.isNaN(v) && !/nan/i.test(t))) throw this.fail(`bad FLOAT ${JSON.stringify(t)}`);
          this.push(v);
          break;
        }
        case 0x58: this.push(utf8.decode(s.bytes(this.u32()))); break; // BINUNICODE
        case 0x8c: this.push(utf8.decode(s.bytes(s.byte()))); break; // SHORT_BINUNICODE
        case 0x8d: this.push(utf8.decode(s.bytes(this.u64()))); break; // BINUNICODE8
        case 0x54: { const n = this.u32(); if (n >= 0x80000000) throw this.fail(`negative BINSTRING length`); this.push(latin1Decode(s.bytes(n))); break; } // BINSTRING
        case 0x55: this.push(latin1Decode(s.bytes(s.byte()))); break; // SHORT_BINSTRING
        case 0x42: this.push(s.bytes(this.u32()).slice()); break; // BINBYTES
        case 0x43: this.push(s.bytes(s.byte()).slice()); break; // SHORT_BINBYTES
        case 0x8e: this.push(s.bytes(this.u64()).slice()); break; // BINBYTES8
        case 0x96: this.push(s.bytes(this.u64()).slice()); break; // BYTEARRAY8
        case 0x97: case 0x98: throw this.fail('out-of-band buffers (pickle protocol 5 NEXT_BUFFER/READONLY_BUFFER) are not supported');
        case 0x29: this.push(Object.freeze([])); break; // EMPTY_TUPLE
        case 0x85: { const a = this.pop(); this.push(Object.freeze([a])); break; } // TUPLE1
        case 0x86: { const b = this.pop(), a = this.pop(); this.push(Object.freeze([a, b])); break; } // TUPLE2
        case 0x87: { const c = this.pop(), b = this.pop(), a = this.pop(); this.push(Object.freeze([a, b, c])); break; } // TUPLE3
        case 0x74: this.push(Object.freeze(this.popMark())); break; // TUPLE
        case 0x5d: this.push([]); break; // EMPTY_LIST
        case 0x6c: this.push(this.popMark()); break; // LIST
        case 0x7d: this.push(new PyDict()); break; // EMPTY_DICT
        case 0x64: { // DICT
          const items = this.popMark();
          if (items.length % 2) throw this.fail('DICT with an odd number of items');
          const d = new PyDict();
          for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
          this.push(d);
          break;
        }
        case 0x8f: this.push(new Set()); break; // EMPTY_SET
        case 0x91: this.push(Object.freeze(new Set(this.popMark()))); break; // FROZENSET
        case 0x90: { // ADDITEMS
          const items = this.popMark(), set = this.top();
          if (!(set instanceof Set) || Object.isFrozen(set)) throw this.fail(`ADDITEMS on ${describeValue(set)}`);
          for (const x of items) set.add(x);
          break;
        }
        case 0x61: case 0x65: { // APPEND, APPENDS
          const items = op === 0x61 ? [this.pop()] : this.popMark();
          const list = this.top();
          if (Array.isArray(list) && !Object.isFrozen(list)) for (const x of items) list.push(x);
          else if (list instanceof PyObject) for (const x of items) list.listItems.push(x);
          else throw this.fail(`APPEND on ${describeValue(list)}`);
          break;
        }
        case 0x73: case 0x75: { // SETITEM, SETITEMS
          const items = op === 0x73 ? (() => { const v = this.pop(), k = this.pop(); return [k, v]; })() : this.popMark();
          if (items.length % 2) throw this.fail('SETITEMS with an odd number of items');
          const d = this.top();
          if (d instanceof PyDict) for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
          else if (d instanceof PyObject) for (let i = 0; i < items.length; i += 2) d.dictItems.push([items[i], items[i + 1]]);
          else throw this.fail(`SETITEM on ${describeValue(d)}`);
          break;
        }
        case 0x70: this.memoPut(Number(this.text(32))); break; // PUT
        case 0x71: this.memoPut(s.byte()); break; // BINPUT
        case 0x72: this.memoPut(this.u32()); break; // LONG_BINPUT
        case 0x94: this.memoPut(this.memo.size); break; // MEMOIZE
        case 0x67: this.memoGet(Number(this.text(32))); break; // GET
        case 0x68: this.memoGet(s.byte()); break; // BINGET
        case 0x6a: this.memoGet(this.u32()); break; // LONG_BINGET
        case 0x63: { const m = this.text(256), n = this.text(256); this.push(this.global(m, n)); break; } // GLOBAL
        case 0x93: { // STACK_GLOBAL
          const n = this.pop(), m = this.pop();
          if (typeof m !== 'string' || typeof n !== 'string') throw this.fail('STACK_GLOBAL needs two strings');
          this.push(this.global(m, n));
          break;
        }
        case 0x52: { const args = this.pop(), fn = this.pop(); this.push(this.call(fn, args, 'reduce')); break; } // REDUCE
        case 0x81: { const args = this.pop(), cls = this.pop(); this.push(this.call(cls, args, 'newobj')); break; } // NEWOBJ
        case 0x92: { // NEWOBJ_EX
          const kwargs = this.pop(), args = this.pop(), cls = this.pop();
          const o = this.call(cls, args, 'newobj');
          if (o instanceof PyObject && kwargs instanceof PyDict && kwargs.size) o.state = { kwargs };
          this.push(o);
          break;
        }
        case 0x69: { // INST
          const m = this.text(256), n = this.text(256);
          this.push(this.call(this.global(m, n), Object.freeze(this.popMark()), 'inst'));
          break;
        }
        case 0x6f: { // OBJ
          const items = this.popMark();
          if (!items.length) throw this.fail('OBJ without a class');
          this.push(this.call(items[0], Object.freeze(items.slice(1)), 'inst'));
          break;
        }
        case 0x62: { // BUILD
          const state = this.pop(), obj = this.top();
          if (obj instanceof PyObject) obj.state = state;
          else if (obj instanceof PyDict) obj.attrs = state;
          else if (obj !== null && typeof obj === 'object' && 'setState' in obj && typeof (obj as { setState: unknown }).setState === 'function') (obj as { setState(s: unknown): void }).setState(state);
          else throw this.fail(`BUILD on ${describeValue(obj)}`);
          break;
        }
        case 0x50: { // PERSID
          const pid = this.text(256);
          if (!this.opts.persistentLoad) throw this.fail('a persistent id where none is expected');
          this.push(this.opts.persistentLoad(pid, this.fail));
          break;
        }
        case 0x51: { // BINPERSID
          const pid = this.pop();
          if (!this.opts.persistentLoad) throw this.fail('a persistent id where none is expected');
          this.push(this.opts.persistentLoad(pid, this.fail));
          break;
        }
        case 0x82: case 0x83: case 0x84: throw this.fail('extension registry codes (EXT1/2/4) are not supported');
        case 0x53: case 0x56: throw this.fail(`protocol 0 string opcode '${String.fromCharCode(op)}' is not supported`);
        default:
          throw this.fail(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')}`);
      }
    }
  }
}
