// PyTorch `torch.save` files (.ckpt, .pt, .pth, .bin) read without executing
// them: the zip archive (`<prefix>/data.pkl` + `<prefix>/data/<key>` storages,
// torch/serialization.py `_save`) and the legacy pre-1.6 stream (magic number,
// protocol, sys info, the object pickle, the storage key list, then each
// storage as an int64 element count and its bytes; `_legacy_save`). The pickle
// goes through the restricted unpickler (pickle.ts); tensors are built from
// storage bytes with their dtype, shape, stride and offset.
import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { endianness } from "node:os";
import {
  BYTES,
  checkDevice,
  type DType,
  defOp,
  empty,
  isContiguous,
  isFloating,
  keep,
  type Tensor,
} from "../engine/index.js";
import { PickleError, PyObject, type StorageRef, TensorRef, torchPersistentLoad, unpickle } from "./pickle.js";
import { type ZipEntry, ZipError, ZipFile } from "./zip.js";

export class CkptError extends Error {
  override name = "CkptError";
}

export type Scalar = string | number | boolean | null;

export interface CkptGetOptions {
  /** Cast floating-point tensors to this dtype. */
  dtype?: DType;
  device?: string;
}

const asStrided = defOp("aten::as_strided");

// The first pickle of a legacy file: the magic number torch/serialization.py writes.
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

interface StorageSource {
  /** A 1-D tensor over all the elements of a root storage. */
  read(ref: StorageRef): Tensor;
  close(): void;
}

function prod(s: readonly number[]): number {
  return s.reduce((a, b) => a * b, 1);
}

function contiguousStrides(shape: readonly number[], stride: readonly number[]): boolean {
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) return false;
    expect *= shape[i];
  }
  return true;
}

/**
 * A tensor's view (offset, sizes, strides) must lie inside the storage the
 * pickle declares. Checked before anything is read; BigInt, so absurd sizes
 * cannot round into plausible ones. Returns the view's element count.
 */
function checkView(path: string, what: string, ref: TensorRef): bigint {
  const shape = ref.shape.map(BigInt);
  const last = shape.reduce((a, d, i) => a + (d - 1n) * BigInt(ref.stride[i]), BigInt(ref.offset));
  if (last >= BigInt(ref.storage.numel)) {
    throw new CkptError(
      `${path}: ${what} ${viewText(ref)} needs ${last + 1n} elements of storage ${ref.storage.key}, ` +
        `which holds ${ref.storage.numel} (corrupt or truncated file)`,
    );
  }
  return shape.reduce((a, d) => a * d, 1n);
}

const viewText = (ref: TensorRef) => `[${ref.shape}] (strides [${ref.stride}], offset ${ref.offset})`;

function checkBool(path: string, key: string, bytes: Uint8Array): void {
  if (bytes.some((b) => b > 1)) throw new CkptError(`${path}: bool storage ${key} holds bytes other than 0/1`);
}

class ZipStorages implements StorageSource {
  constructor(
    readonly zip: ZipFile,
    readonly prefix: string,
    readonly verify: boolean,
  ) {}

  read(ref: StorageRef): Tensor {
    const name = `${this.prefix}data/${ref.key}`;
    const e: ZipEntry | undefined = this.zip.get(name);
    if (!e) throw new CkptError(`${this.zip.path}: storage ${ref.key} is missing from the archive (no ${name})`);
    const size = BYTES[ref.dtype];
    if (e.size % size !== 0)
      throw new CkptError(
        `${this.zip.path}: storage ${ref.key}: ${e.size} bytes is not a whole number of ${ref.dtype}`,
      );
    // Nothing is allocated before the file is known to hold it: the pickle's
    // element count against the entry, the entry against the file (dataOffset).
    const declared = BigInt(ref.viewOffset + ref.numel) * BigInt(size);
    if (declared > BigInt(e.size)) {
      throw new CkptError(
        `${this.zip.path}: storage ${ref.key} is declared as ${ref.numel} ${ref.dtype} elements (${declared} bytes), ` +
          `but its entry ${name} holds ${e.size} bytes (corrupt or truncated file)`,
      );
    }
    this.zip.dataOffset(e);
    const t = empty([e.size / size], { dtype: ref.dtype });
    try {
      if (e.size > 0) {
        t.withBytes((bytes) => {
          this.zip.readInto(e, bytes, this.verify);
          if (ref.dtype === "bool") checkBool(this.zip.path, ref.key, bytes);
        });
      }
      return t;
    } catch (err) {
      t.dispose();
      throw err;
    }
  }

  close(): void {
    this.zip.close();
  }
}

class LegacyStorages implements StorageSource {
  constructor(
    readonly path: string,
    readonly data: Buffer,
    readonly where: Map<string, { offset: number; numel: number }>,
  ) {}

  read(ref: StorageRef): Tensor {
    const w = this.where.get(ref.key);
    if (!w) throw new CkptError(`${this.path}: storage ${ref.key} is not in the file's storage list`);
    const t = empty([w.numel], { dtype: ref.dtype });
    const n = w.numel * BYTES[ref.dtype];
    if (n > 0) {
      t.withBytes((bytes) => {
        bytes.set(this.data.subarray(w.offset, w.offset + n));
        if (ref.dtype === "bool") checkBool(this.path, ref.key, bytes);
      });
    }
    return t;
  }

  close(): void {}
}

/** A parsed torch.save file: the object tree (tensors as TensorRef) and where the storages are. */
export class TorchArchive {
  readonly #storages: StorageSource;
  #cache: Map<string, Tensor> | undefined;
  #cacheable: (key: string) => boolean = () => true;
  /** Bytes of expanded views made so far, each view counted once (see #checkExpansion). */
  #expanded = 0n;
  readonly #expandedRefs = new WeakSet<TensorRef>();

  /** Use openTorchArchive(). */
  constructor(
    readonly path: string,
    readonly format: "zip" | "legacy",
    readonly root: unknown,
    storages: StorageSource,
    /** Bytes of the file: the measure of what it can justify allocating. */
    readonly fileSize: number,
  ) {
    this.#storages = storages;
  }

  /**
   * A view with zero or overlapping strides (an expanded tensor, as
   * `torch.tensor([1., 2.]).expand(3, 2)` saves) has more elements than its
   * storage, and its contiguous copy is larger than the stored bytes. Such
   * copies, all of them together, may be no larger than the file: a few
   * stored bytes must not become gigabytes.
   */
  #checkExpansion(ref: TensorRef, numel: bigint, what: string): void {
    if (numel <= BigInt(ref.storage.numel) || this.#expandedRefs.has(ref)) return;
    const bytes = numel * BigInt(BYTES[ref.storage.dtype]);
    if (this.#expanded + bytes > BigInt(this.fileSize)) {
      throw new CkptError(
        `${this.path}: ${what} ${viewText(ref)} repeats the ${ref.storage.numel} elements of storage ${ref.storage.key} ` +
          `into ${numel}: its copy would take ${bytes} bytes` +
          `${this.#expanded > 0n ? ` (after ${this.#expanded} bytes of other expanded tensors)` : ""}, ` +
          `more than the file's ${this.fileSize} bytes`,
      );
    }
    this.#expanded += bytes;
    this.#expandedRefs.add(ref);
  }

  /**
   * Builds the tensor a TensorRef describes: a new contiguous CPU tensor (cast
   * and moved when asked), checked against its storage's size.
   */
  tensor(ref: TensorRef, o: CkptGetOptions = {}, what = "tensor"): Tensor {
    if (o.device !== undefined) checkDevice(o.device);
    const s = ref.storage;
    const numel = prod(ref.shape);
    let t: Tensor;
    if (numel === 0) t = empty([...ref.shape], { dtype: s.dtype });
    else {
      this.#checkExpansion(ref, checkView(this.path, what, ref), what);
      const cached = this.#cache?.get(s.key);
      const base = cached ?? this.#storages.read(s);
      try {
        const start = s.viewOffset + ref.offset;
        const last = start + ref.shape.reduce((a, d, i) => a + (d - 1) * ref.stride[i], 0);
        const avail = base.numel;
        if (s.viewOffset + s.numel > avail || last >= avail) {
          throw new CkptError(
            `${this.path}: ${what} [${ref.shape}] needs ${last + 1} elements of storage ${s.key}, which holds ${avail} (corrupt or truncated file)`,
          );
        }
        if (start === 0 && numel === avail && contiguousStrides(ref.shape, ref.stride)) {
          t = base.reshape(...ref.shape);
        } else {
          const v = asStrided.t(base.id, [...ref.shape], [...ref.stride], start);
          // A contiguous part of a larger storage is copied so it does not keep the rest alive.
          t = isContiguous(v) ? v.clone() : v.contiguous();
          v.dispose();
        }
      } finally {
        if (!cached) {
          // kept: the cache, not a scope of the caller's, frees it when withStorageCache ends
          if (this.#cache && this.#cacheable(s.key)) this.#cache.set(s.key, keep(base));
          else base.dispose();
        }
      }
    }
    const dtype = o.dtype && isFloating(t.dtype) && o.dtype !== t.dtype ? o.dtype : undefined;
    const device = o.device && o.device !== "cpu" ? o.device : undefined;
    if (!dtype && !device) return t;
    const out = device ? t.to(device, dtype) : t.to(dtype as DType);
    t.dispose();
    return out;
  }

  /**
   * Runs `fn` with storages read once and shared between the tensors it
   * builds, then freed. Only keys passing `cacheable` are kept (storages used
   * by one tensor need not be, which keeps peak memory down when casting).
   */
  withStorageCache<T>(fn: () => T, cacheable: (key: string) => boolean = () => true): T {
    if (this.#cache) return fn();
    this.#cache = new Map();
    this.#cacheable = cacheable;
    try {
      return fn();
    } finally {
      for (const t of this.#cache.values()) t.dispose();
      this.#cache = undefined;
      this.#cacheable = () => true;
    }
  }

  close(): void {
    this.#storages.close();
  }
}

/** Parses a torch.save file (zip or legacy). Nothing in it is executed. Call close(). */
export function openTorchArchive(path: string, o: { verifyCrc?: boolean } = {}): TorchArchive {
  if (endianness() !== "LE") throw new CkptError(`${path}: reading torch files needs a little-endian host`);
  const head = Buffer.alloc(4);
  const n = readFileHead(path, head);
  if (n < 4) throw new CkptError(`${path}: too short to be a PyTorch file (${n} bytes)`);
  try {
    if (head.readUInt32LE(0) === 0x04034b50 || head.readUInt32LE(0) === 0x06054b50)
      return openZip(path, o.verifyCrc ?? true);
    if (head[0] === 0x80) return openLegacy(path);
  } catch (e) {
    if (e instanceof ZipError || e instanceof PickleError)
      throw new CkptError(e.message.startsWith(path) ? e.message : `${path}: ${e.message}`);
    throw e;
  }
  throw new CkptError(
    `${path}: not a PyTorch file (neither a zip archive nor a pickle; the old tar format is not supported)`,
  );
}

function readFileHead(path: string, into: Buffer): number {
  const fd = openSync(path, "r");
  try {
    return readSync(fd, into, 0, into.length, 0);
  } finally {
    closeSync(fd);
  }
}

function openZip(path: string, verify: boolean): TorchArchive {
  const zip = ZipFile.open(path);
  try {
    const pkls = zip.entries().filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
    if (pkls.length !== 1) {
      const names = zip
        .entries()
        .slice(0, 5)
        .map((e) => e.name);
      throw new CkptError(
        `${path}: ${pkls.length === 0 ? "no <archive>/data.pkl" : "several data.pkl records"}: not a PyTorch checkpoint archive (entries: ${names.join(", ")})`,
      );
    }
    const prefix = pkls[0].name.slice(0, -"data.pkl".length);
    const order = zip.get(`${prefix}byteorder`);
    if (order) {
      if (order.size > 64) throw new CkptError(`${path}: ${order.name}: ${order.size} bytes, not a byte order name`);
      const text = zip.read(order).toString("latin1").trim();
      if (text !== "little")
        throw new CkptError(`${path}: byte order '${text}' is not supported (only little-endian archives)`);
    }
    const pkl = zip.read(pkls[0]);
    const { value, end } = unpickle(pkl, { what: `${path}: ${pkls[0].name}` });
    if (end !== pkl.length)
      throw new CkptError(`${path}: ${pkls[0].name}: ${pkl.length - end} stray bytes after the pickle`);
    return new TorchArchive(path, "zip", value, new ZipStorages(zip, prefix, verify), zip.size);
  } catch (e) {
    zip.close();
    throw e;
  }
}

/** torch/serialization.py `_legacy_load`: the whole file is read into memory. */
function openLegacy(path: string): TorchArchive {
  const data = readFileSync(path);
  const what = `${path} (legacy torch.save format)`;
  const magic = unpickle(data, { what, persistentLoad: refuse });
  if (magic.value !== LEGACY_MAGIC)
    throw new CkptError(`${path}: a pickle, but not a torch.save file (no magic number)`);
  const proto = unpickle(data, { what, start: magic.end, persistentLoad: refuse });
  if (proto.value !== 1001)
    throw new CkptError(`${path}: legacy protocol version ${String(proto.value)} is not supported`);
  const sys = unpickle(data, { what, start: proto.end, persistentLoad: refuse });
  if (sys.value instanceof Map && sys.value.get("little_endian") === false)
    throw new CkptError(`${path}: big-endian files are not supported`);
  const roots = new Map<string, StorageRef>();
  const main = unpickle(data, {
    what,
    start: sys.end,
    persistentLoad: (pid) => {
      const ref = torchPersistentLoad(pid);
      const seen = roots.get(ref.key);
      if (seen && seen.dtype !== ref.dtype)
        throw new PickleError(`storage ${ref.key} is read as ${seen.dtype} and ${ref.dtype}`);
      if (!seen || ref.viewOffset === 0) roots.set(ref.key, ref);
      return ref;
    },
  });
  const keys = unpickle(data, { what, start: main.end, persistentLoad: refuse });
  if (!Array.isArray(keys.value)) throw new CkptError(`${path}: legacy storage key list is missing`);
  const where = new Map<string, { offset: number; numel: number }>();
  let at = keys.end;
  for (const k of keys.value) {
    if (typeof k !== "string") {
      throw new CkptError(`${path}: the legacy storage key list holds a ${describeValue(k)}, not a storage key string`);
    }
    const ref = roots.get(k);
    if (!ref) throw new CkptError(`${path}: storage ${JSON.stringify(k)} is listed but never used`);
    if (at + 8 > data.length) throw new CkptError(`${path}: truncated before storage ${ref.key}`);
    const numel = Number(data.readBigInt64LE(at));
    const bytes = numel * BYTES[ref.dtype];
    if (numel < 0 || at + 8 + bytes > data.length)
      throw new CkptError(`${path}: storage ${ref.key} runs past the end of the file (truncated?)`);
    where.set(ref.key, { offset: at + 8, numel });
    at += 8 + bytes;
  }
  return new TorchArchive(path, "legacy", main.value, new LegacyStorages(path, data, where), data.length);
}

function refuse(): never {
  throw new PickleError("unexpected persistent id");
}

// ---- state dicts ------------------------------------------------------------------------

/** The state-dict view of a torch file: tensors by name, read on demand, plus its non-tensor entries. */
export class CkptFile {
  readonly #archive: TorchArchive;
  readonly #refs: Map<string, TensorRef>;
  /** Non-tensor entries: `global_step`, `epoch`, Lightning's top-level scalars… */
  readonly metadata: Record<string, Scalar>;

  constructor(archive: TorchArchive, refs: Map<string, TensorRef>, metadata: Record<string, Scalar>) {
    this.#archive = archive;
    this.#refs = refs;
    this.metadata = metadata;
  }

  get path(): string {
    return this.#archive.path;
  }

  get format(): "zip" | "legacy" {
    return this.#archive.format;
  }

  keys(): string[] {
    return [...this.#refs.keys()];
  }

  has(name: string): boolean {
    return this.#refs.has(name);
  }

  /** Stored dtype and shape, without reading any data. */
  info(name: string): { dtype: DType; shape: number[] } {
    const r = this.#ref(name);
    return { dtype: r.storage.dtype, shape: [...r.shape] };
  }

  get(name: string, o: CkptGetOptions = {}): Tensor {
    return this.#archive.tensor(this.#ref(name), o, `tensor ${JSON.stringify(name)}`);
  }

  /** Runs `fn` reading each storage once even when tensors share it. */
  batch<T>(fn: () => T): T {
    const uses = new Map<string, number>();
    for (const r of this.#refs.values()) uses.set(r.storage.key, (uses.get(r.storage.key) ?? 0) + 1);
    return this.#archive.withStorageCache(fn, (key) => (uses.get(key) ?? 0) > 1);
  }

  close(): void {
    this.#archive.close();
  }

  #ref(name: string): TensorRef {
    const r = this.#refs.get(name);
    if (!r) throw new CkptError(`${this.path}: no tensor named ${JSON.stringify(name)}`);
    return r;
  }
}

function scalar(v: unknown): Scalar | undefined {
  if (v === null || typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v;
  if (typeof v === "bigint") return v.toString();
  return undefined;
}

/**
 * Opens a torch file holding a state dict (a dict of tensors, possibly nested
 * under `state_dict` as Lightning saves it). Non-tensor entries of either
 * level go to `metadata`; tensors elsewhere (optimizer state…) are skipped.
 */
export function openCkpt(path: string, o: { verifyCrc?: boolean } = {}): CkptFile {
  const a = openTorchArchive(path, o);
  try {
    const root = a.root;
    if (!(root instanceof Map))
      throw new CkptError(`${path}: holds ${Array.isArray(root) ? "a list" : typeof root}, not a state dict`);
    const metadata: Record<string, Scalar> = {};
    let sd = root;
    const nested = root.get("state_dict");
    if (nested instanceof Map) {
      sd = nested;
      for (const [k, v] of root) {
        const s = scalar(v);
        if (typeof k === "string" && s !== undefined) metadata[k] = s;
      }
    }
    const refs = new Map<string, TensorRef>();
    for (const [k, v] of sd) {
      if (typeof k !== "string") continue;
      if (v instanceof TensorRef) refs.set(k, v);
      else {
        const s = scalar(v);
        if (s !== undefined) metadata[k] = s;
      }
    }
    return new CkptFile(a, refs, metadata);
  } catch (e) {
    a.close();
    throw e;
  }
}

/** Reads every tensor of a state-dict torch file (or those passing `filter`); on error none is left alive. */
export function loadCkpt(
  path: string,
  o: CkptGetOptions & { filter?: (name: string) => boolean } = {},
): { tensors: Map<string, Tensor>; metadata: Record<string, Scalar> } {
  const f = openCkpt(path);
  const tensors = new Map<string, Tensor>();
  try {
    f.batch(() => {
      for (const k of f.keys()) if (!o.filter || o.filter(k)) tensors.set(k, f.get(k, o));
    });
    return { tensors, metadata: { ...f.metadata } };
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  } finally {
    f.close();
  }
}

/**
 * Reads any torch file made of allowed types (a list of tensors, a TI
 * embedding dict, a hypernetwork…) and returns its object tree with Tensors
 * in place of tensor references: dicts are Maps, lists and tuples arrays.
 * The caller owns the tensors (use `disposeAll`); on error none is left alive.
 */
export function loadTorchFile(path: string, o: CkptGetOptions = {}): unknown {
  const a = openTorchArchive(path);
  const made: Tensor[] = [];
  const seen = new Map<unknown, unknown>();
  const walk = (v: unknown): unknown => {
    if (v instanceof TensorRef) {
      const t = a.tensor(v, o);
      made.push(t);
      return t;
    }
    if (v instanceof PyObject) {
      // an inert allowed instance (an nn.ParameterDict): its state's tensors are loaded too
      const out = new PyObject(v.cls, v.args);
      out.state = walk(v.state);
      return out;
    }
    if (typeof v !== "object" || v === null || !(v instanceof Map || Array.isArray(v))) return v;
    const done = seen.get(v);
    if (done) return done;
    if (Array.isArray(v)) {
      const out: unknown[] = [];
      seen.set(v, out);
      for (const x of v) out.push(walk(x));
      return out;
    }
    const out = new Map<unknown, unknown>();
    seen.set(v, out);
    for (const [k, x] of v) out.set(k, walk(x));
    return out;
  };
  try {
    return a.withStorageCache(() => walk(a.root));
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  } finally {
    a.close();
  }
}

/** What a pickled value is, for messages (never `[object …]`). */
function describeValue(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (Array.isArray(v)) return "list";
  if (v instanceof Map) return "dict";
  if (typeof v === "object") return (v as object).constructor?.name ?? "object";
  return typeof v;
}
