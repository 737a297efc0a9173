// A restricted unpickler for PyTorch state dicts. It implements the pickle
// virtual machine (protocols 0–5, CPython Lib/pickle.py and
// Lib/pickletools.py for the opcodes) but resolves GLOBAL / STACK_GLOBAL only
// from an allow-list of the types a state dict is made of (pickle-allow.ts,
// each implemented in TypeScript). Any other global (os.system, builtins.eval, …) is an
// error naming it; nothing from the file is ever called or imported, so
// nothing can run (docs/formats.md: "never execute it"). Tensors come out as
// TensorRef descriptors; ckpt.ts turns them into engine tensors.
import {
  call,
  describe,
  NumpyDtype,
  PickleError,
  PyObject,
  resolve,
  smallInt,
  TensorRef,
  torchPersistentLoad,
} from "./pickle-allow.js";

export {
  ALLOWED_GLOBALS,
  NumpyDtype,
  PickleError,
  PyGlobal,
  PyObject,
  StorageRef,
  TensorRef,
  torchPersistentLoad,
} from "./pickle-allow.js";

export type PersistentLoad = (pid: unknown) => unknown;

export interface UnpickleOptions {
  /** Resolves persistent ids; by default PyTorch's `('storage', type, key, location, numel)` → StorageRef. */
  persistentLoad?: PersistentLoad;
  /** Names the data in error messages (a file path). */
  what?: string;
  /** Where the pickle starts in `data`. */
  start?: number;
}

// ---- the virtual machine ------------------------------------------------------------------

const MARK = Symbol("mark");
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Unpickles one pickle from `data`; returns its value and the offset just past its STOP. */
export function unpickle(data: Uint8Array, o: UnpickleOptions = {}): { value: unknown; end: number } {
  const what = o.what ?? "pickle";
  const vm = new Machine(data, o.start ?? 0, o.persistentLoad ?? torchPersistentLoad);
  try {
    return vm.run();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const op = vm.op >= 0 ? ` (opcode 0x${vm.op.toString(16).padStart(2, "0")} at byte ${vm.opAt})` : "";
    throw new PickleError(`${what}: ${msg}${op}`);
  }
}

class Machine {
  pos: number;
  op = -1;
  opAt = 0;
  readonly view: DataView;
  stack: unknown[] = [];
  readonly memo = new Map<number, unknown>();

  constructor(
    readonly data: Uint8Array,
    start: number,
    readonly persistentLoad: PersistentLoad,
  ) {
    this.pos = start;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  need(n: number): number {
    if (!Number.isSafeInteger(n) || n < 0 || this.pos + n > this.data.length)
      throw new PickleError("truncated pickle data");
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8 = () => this.data[this.need(1)];
  u16 = () => this.view.getUint16(this.need(2), true);
  u32 = () => this.view.getUint32(this.need(4), true);
  i32 = () => this.view.getInt32(this.need(4), true);
  u64(): number {
    const v = this.view.getBigUint64(this.need(8), true);
    if (v > BigInt(this.data.length)) throw new PickleError("truncated pickle data");
    return Number(v);
  }
  bytes = (n: number) => this.data.subarray(this.need(n), this.pos);
  line(): string {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0) throw new PickleError("truncated pickle data (no end of line)");
    const s = Buffer.from(this.data.subarray(this.pos, end)).toString("latin1");
    this.pos = end + 1;
    return s;
  }
  str(n: number): string {
    try {
      return utf8.decode(this.bytes(n));
    } catch {
      throw new PickleError("invalid UTF-8 in a string");
    }
  }

  pop(): unknown {
    if (this.stack.length === 0 || this.stack[this.stack.length - 1] === MARK) throw new PickleError("stack underflow");
    return this.stack.pop();
  }
  top(): unknown {
    const v = this.stack[this.stack.length - 1];
    if (this.stack.length === 0 || v === MARK) throw new PickleError("stack underflow");
    return v;
  }
  popMark(): unknown[] {
    const i = this.stack.lastIndexOf(MARK);
    if (i < 0) throw new PickleError("no MARK on the stack");
    const items = this.stack.slice(i + 1);
    this.stack.length = i;
    return items;
  }
  get(i: number): unknown {
    if (!this.memo.has(i)) throw new PickleError(`memo key ${i} is not defined`);
    return this.memo.get(i);
  }
  setItems(target: unknown, items: unknown[]): void {
    if (!(target instanceof Map)) throw new PickleError(`SETITEMS on ${describe(target)}`);
    if (items.length % 2 !== 0) throw new PickleError("SETITEMS with an odd number of items");
    for (let i = 0; i < items.length; i += 2) target.set(hashable(items[i]), items[i + 1]);
  }
  append(target: unknown, items: unknown[]): void {
    if (!Array.isArray(target) || Object.isFrozen(target)) throw new PickleError(`APPEND on ${describe(target)}`);
    target.push(...items);
  }
  tuple(items: unknown[]): unknown[] {
    return Object.freeze(items) as unknown[];
  }
  long(b: Uint8Array): number | bigint {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return smallInt(v);
  }
  textInt(s: string): number | bigint | boolean {
    const t = s.endsWith("L") ? s.slice(0, -1) : s;
    if (t === "00") return false;
    if (t === "01") return true;
    if (!/^[+-]?\d+$/.test(t)) throw new PickleError(`bad integer literal ${JSON.stringify(s)}`);
    return smallInt(BigInt(t));
  }

  run(): { value: unknown; end: number } {
    const S = this.stack;
    for (;;) {
      this.opAt = this.pos;
      this.op = this.u8();
      switch (this.op) {
        case 0x80: // PROTO
          if (this.u8() > 5) throw new PickleError("unsupported pickle protocol");
          break;
        case 0x95: // FRAME: the data is all here already
          this.u64();
          break;
        case 0x2e: // STOP
          this.op = -1;
          return { value: this.pop(), end: this.pos };
        case 0x28: // MARK
          S.push(MARK);
          break;
        case 0x30: // POP
          if (S[S.length - 1] === MARK) S.pop();
          else this.pop();
          break;
        case 0x31: // POP_MARK
          this.popMark();
          break;
        case 0x32: // DUP
          S.push(this.top());
          break;
        case 0x4e: // NONE
          S.push(null);
          break;
        case 0x88: // NEWTRUE
          S.push(true);
          break;
        case 0x89: // NEWFALSE
          S.push(false);
          break;
        case 0x4a: // BININT
          S.push(this.i32());
          break;
        case 0x4b: // BININT1
          S.push(this.u8());
          break;
        case 0x4d: // BININT2
          S.push(this.u16());
          break;
        case 0x8a: // LONG1
          S.push(this.long(this.bytes(this.u8())));
          break;
        case 0x8b: {
          // LONG4
          const n = this.i32();
          if (n < 0) throw new PickleError("negative LONG4 length");
          S.push(this.long(this.bytes(n)));
          break;
        }
        case 0x49: // INT (text)
          S.push(this.textInt(this.line()));
          break;
        case 0x4c: // LONG (text)
          S.push(this.textInt(this.line()));
          break;
        case 0x47: // BINFLOAT (big-endian)
          S.push(this.view.getFloat64(this.need(8), false));
          break;
        case 0x46: {
          // FLOAT (text)
          const f = Number(this.line());
          if (Number.isNaN(f)) throw new PickleError("bad float literal");
          S.push(f);
          break;
        }
        case 0x58: // BINUNICODE
          S.push(this.str(this.u32()));
          break;
        case 0x8c: // SHORT_BINUNICODE
          S.push(this.str(this.u8()));
          break;
        case 0x8d: // BINUNICODE8
          S.push(this.str(this.u64()));
          break;
        case 0x56: // UNICODE (raw-unicode-escape text)
          S.push(this.line().replace(/\\u([0-9a-fA-F]{4})/g, (_, h) => String.fromCharCode(Number.parseInt(h, 16))));
          break;
        case 0x54: // BINSTRING (py2 str, read as latin-1)
          S.push(Buffer.from(this.bytes(this.i32())).toString("latin1"));
          break;
        case 0x55: // SHORT_BINSTRING
          S.push(Buffer.from(this.bytes(this.u8())).toString("latin1"));
          break;
        case 0x53: {
          // STRING (quoted text)
          const s = this.line();
          const q = s[0];
          if ((q !== "'" && q !== '"') || s.length < 2 || s[s.length - 1] !== q)
            throw new PickleError("bad STRING literal");
          S.push(s.slice(1, -1));
          break;
        }
        case 0x42: // BINBYTES
          S.push(this.bytes(this.u32()).slice());
          break;
        case 0x43: // SHORT_BINBYTES
          S.push(this.bytes(this.u8()).slice());
          break;
        case 0x8e: // BINBYTES8
        case 0x96: // BYTEARRAY8
          S.push(this.bytes(this.u64()).slice());
          break;
        case 0x29: // EMPTY_TUPLE
          S.push(this.tuple([]));
          break;
        case 0x85: // TUPLE1
          S.push(this.tuple([this.pop()]));
          break;
        case 0x86: {
          // TUPLE2
          const b = this.pop();
          S.push(this.tuple([this.pop(), b]));
          break;
        }
        case 0x87: {
          // TUPLE3
          const c = this.pop();
          const b = this.pop();
          S.push(this.tuple([this.pop(), b, c]));
          break;
        }
        case 0x74: // TUPLE
          S.push(this.tuple(this.popMark()));
          break;
        case 0x5d: // EMPTY_LIST
          S.push([]);
          break;
        case 0x6c: // LIST
          S.push(this.popMark());
          break;
        case 0x61: {
          // APPEND
          const v = this.pop();
          this.append(this.top(), [v]);
          break;
        }
        case 0x65: {
          // APPENDS
          const items = this.popMark();
          this.append(this.top(), items);
          break;
        }
        case 0x7d: // EMPTY_DICT
          S.push(new Map());
          break;
        case 0x64: {
          // DICT
          const m = new Map();
          this.setItems(m, this.popMark());
          S.push(m);
          break;
        }
        case 0x73: {
          // SETITEM
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.top(), [k, v]);
          break;
        }
        case 0x75: {
          // SETITEMS
          const items = this.popMark();
          this.setItems(this.top(), items);
          break;
        }
        case 0x8f: // EMPTY_SET
          S.push(new Set());
          break;
        case 0x90: {
          // ADDITEMS
          const items = this.popMark();
          const t = this.top();
          if (!(t instanceof Set)) throw new PickleError(`ADDITEMS on ${describe(t)}`);
          for (const i of items) t.add(hashable(i));
          break;
        }
        case 0x91: // FROZENSET
          S.push(new Set(this.popMark().map(hashable)));
          break;
        case 0x70: // PUT (text)
          this.memo.set(this.memoIndex(this.line()), this.top());
          break;
        case 0x71: // BINPUT
          this.memo.set(this.u8(), this.top());
          break;
        case 0x72: // LONG_BINPUT
          this.memo.set(this.u32(), this.top());
          break;
        case 0x94: // MEMOIZE
          this.memo.set(this.memo.size, this.top());
          break;
        case 0x67: // GET (text)
          S.push(this.get(this.memoIndex(this.line())));
          break;
        case 0x68: // BINGET
          S.push(this.get(this.u8()));
          break;
        case 0x6a: // LONG_BINGET
          S.push(this.get(this.u32()));
          break;
        case 0x63: {
          // GLOBAL
          const module = this.line();
          S.push(resolve(module, this.line()));
          break;
        }
        case 0x93: {
          // STACK_GLOBAL
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== "string" || typeof name !== "string")
            throw new PickleError("STACK_GLOBAL needs two strings");
          S.push(resolve(module, name));
          break;
        }
        case 0x52: {
          // REDUCE
          const args = this.pop();
          const fn = this.pop();
          if (!Array.isArray(args)) throw new PickleError("REDUCE arguments are not a tuple");
          S.push(call(fn, args));
          break;
        }
        case 0x81: {
          // NEWOBJ: cls.__new__(cls, *args)
          const args = this.pop();
          const cls = this.pop();
          if (!Array.isArray(args)) throw new PickleError("NEWOBJ arguments are not a tuple");
          S.push(call(cls, args));
          break;
        }
        case 0x92: {
          // NEWOBJ_EX
          this.pop();
          const args = this.pop();
          const cls = this.pop();
          if (!Array.isArray(args)) throw new PickleError("NEWOBJ_EX arguments are not a tuple");
          S.push(call(cls, args));
          break;
        }
        case 0x6f: {
          // OBJ
          const items = this.popMark();
          if (items.length === 0) throw new PickleError("OBJ without a class");
          S.push(call(items[0], items.slice(1)));
          break;
        }
        case 0x69: {
          // INST
          const module = this.line();
          const cls = resolve(module, this.line());
          S.push(call(cls, this.popMark()));
          break;
        }
        case 0x62: {
          // BUILD: obj.__setstate__(state) — only kept as data
          const state = this.pop();
          const obj = this.top();
          if (obj instanceof PyObject) obj.state = state;
          else if (obj instanceof NumpyDtype) {
            if (Array.isArray(state) && typeof state[1] === "string") obj.byteorder = state[1];
          } else if (!(obj instanceof Map) && !(obj instanceof TensorRef)) {
            // OrderedDict state (`_metadata`) and tensor state are not needed for the weights.
            throw new PickleError(`BUILD on ${describe(obj)}`);
          }
          break;
        }
        case 0x51: // BINPERSID
          S.push(this.persistentLoad(this.pop()));
          break;
        case 0x50: // PERSID (text)
          S.push(this.persistentLoad(this.line()));
          break;
        case 0x82: // EXT1
        case 0x83: // EXT2
        case 0x84: // EXT4
          throw new PickleError("the extension registry (EXT opcodes) is not supported");
        case 0x97: // NEXT_BUFFER
        case 0x98: // READONLY_BUFFER
          throw new PickleError("out-of-band buffers are not supported");
        default:
          throw new PickleError(`unknown opcode 0x${this.op.toString(16).padStart(2, "0")} (corrupt pickle?)`);
      }
    }
  }

  memoIndex(s: string): number {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n < 0) throw new PickleError(`bad memo index ${JSON.stringify(s)}`);
    return n;
  }
}

/** Dict keys and set items: primitives by value; a tuple of primitives by its text; other objects by identity. */
function hashable(k: unknown): unknown {
  if (Array.isArray(k) && Object.isFrozen(k) && k.every((x) => x === null || typeof x !== "object")) {
    return `(${k.map((x) => (typeof x === "string" ? JSON.stringify(x) : String(x))).join(", ")})`;
  }
  return k;
}
