// safetensors: lazy reading by name straight into tensor memory, and atomic
// writing in the reference writer's layout (huggingface/safetensors
// safetensors/src/tensor.rs, `prepare`). Format: docs/formats.md.
// Tensor bytes never pass through a JS heap buffer: a tensor of 64 KiB or
// more is a private mapping of its bytes in the file (native/file_tensor.cc),
// a smaller one is read into its own memory; writes come from a zero-copy view
// of a contiguous CPU tensor.
import { type BigIntStats, closeSync, fstatSync, openSync, readSync } from "node:fs";
import { endianness } from "node:os";
import { BYTES, checkDevice, type DType, isContiguous, isFloating, readFileTensor, Tensor } from "../engine/index.js";
import { writeAll, writeFileAtomic } from "./atomic-write.js";
import {
  checkHeaderLength,
  DTYPE_TO_FILE,
  parseHeader,
  SafetensorsError,
  type TensorInfo,
} from "./safetensors-header.js";

export { findDuplicateKey, MAX_HEADER_BYTES, SafetensorsError, type TensorInfo } from "./safetensors-header.js";

export interface GetOptions {
  /** Cast to this dtype after reading. */
  dtype?: DType;
  /** Move to this device ("cpu", "cuda", "cuda:1") after reading. */
  device?: string;
  /**
   * false: read into memory the tensor owns, instead of mapping the file
   * (default true). A mapped tensor is writable (copy on write, the file is
   * never changed), but the file must then not be truncated or rewritten in
   * place while the tensor lives: replace it by renaming a new file over it.
   */
  mmap?: boolean;
}

export interface LoadOptions {
  /** Cast floating-point tensors to this dtype; integer and bool tensors keep theirs. */
  dtype?: DType;
  device?: string;
  /** Load only the tensors whose name passes. */
  filter?: (name: string) => boolean;
  /** See GetOptions.mmap. */
  mmap?: boolean;
}

// fs calls take at most 2 GiB − 1 bytes at once.
const CHUNK = 1 << 30;

/** Reads exactly `into.byteLength` bytes at `position`, or throws at end of file. */
function readExactly(fd: number, into: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < into.byteLength) {
    const n = readSync(fd, into, done, Math.min(CHUNK, into.byteLength - done), position + done);
    if (n === 0)
      throw new SafetensorsError(`${what}: unexpected end of file after ${done} of ${into.byteLength} bytes`);
    done += n;
  }
}

/** An open safetensors file: the header is parsed, tensors are read on demand. Call close(). */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly #tensors: Map<string, TensorInfo>;
  readonly #stamp: BigIntStats;
  #fd: number | undefined;

  /** Use openSafetensors(). */
  constructor(path: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = path;
    this.#fd = fd;
    this.#stamp = fstatSync(fd, { bigint: true });
    this.#tensors = tensors;
    this.metadata = metadata;
  }

  /** Tensor names, in the order of their data in the file. */
  keys(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  get size(): number {
    return this.#tensors.size;
  }

  /** Stored dtype, shape and byte size of a tensor, without reading it. */
  info(name: string): TensorInfo {
    const i = this.#tensors.get(name);
    if (!i) throw this.#missing(name);
    return { ...i, shape: [...i.shape] };
  }

  /** Reads one tensor into new memory; casts and moves it when asked (any dtype, as requested). */
  get(name: string, o: GetOptions = {}): Tensor {
    if (this.#fd === undefined)
      throw new SafetensorsError(`${this.path}: file is closed; cannot read ${JSON.stringify(name)}`);
    const info = this.#tensors.get(name);
    if (!info) throw this.#missing(name);
    if (o.device !== undefined) checkDevice(o.device);
    const what = `${this.path}: tensor ${JSON.stringify(name)}`;
    const fd = this.#fd;
    let t: Tensor;
    try {
      t = readFileTensor(fd, info.offset, info.byteLength, info.shape, info.dtype, o.mmap === false ? "read" : "map");
    } catch (e) {
      throw new SafetensorsError(`${what}: ${(e as Error).message}`);
    }
    try {
      this.#checkUnchanged(fd, what);
      // A bool byte other than 0 or 1 is undefined behaviour in libtorch.
      if (info.dtype === "bool" && info.byteLength > 0 && t.withBytes((bytes) => bytes.some((b) => b > 1))) {
        throw new SafetensorsError(`${what} is BOOL but holds bytes other than 0/1`);
      }
      const dtype = o.dtype ?? info.dtype;
      const device = o.device ?? "cpu";
      if (dtype === info.dtype && device === "cpu") return t;
      const out = device === "cpu" ? t.to(dtype) : t.to(device, dtype);
      t.dispose();
      return out;
    } catch (e) {
      t.dispose();
      throw e;
    }
  }

  /** Releases the file descriptor; later get() calls throw. Safe to call twice. */
  close(): void {
    if (this.#fd !== undefined) {
      closeSync(this.#fd);
      this.#fd = undefined;
    }
  }

  /**
   * A file rewritten in place since it was opened would give a mix of old and
   * new bytes. (Not ctime: renaming a new file over this one changes only the
   * old file's link count, and its data stays readable.)
   */
  #checkUnchanged(fd: number, what: string): void {
    const now = fstatSync(fd, { bigint: true });
    const was = this.#stamp;
    if (now.size !== was.size || now.mtimeNs !== was.mtimeNs) {
      throw new SafetensorsError(
        `${what}: the file changed on disk since it was opened (${was.size} → ${now.size} bytes, ` +
          `modified ${now.mtime.toISOString()}); reopen it`,
      );
    }
  }

  #missing(name: string): Error {
    const names = this.keys();
    const shown = names.slice(0, 8).map((n) => JSON.stringify(n.length > 100 ? `${n.slice(0, 99)}…` : n));
    const more = names.length > shown.length ? `, … ${names.length - shown.length} more` : "";
    return new SafetensorsError(
      `${this.path}: no tensor named ${JSON.stringify(name)} (the file holds ${names.length}: ${shown.join(", ")}${more})`,
    );
  }
}

/** Opens a safetensors file and checks its header (only the header is read). */
export function openSafetensors(path: string): SafetensorsFile {
  if (endianness() !== "LE") throw new SafetensorsError(`${path}: safetensors data is little-endian; this host is not`);
  const fd = openSync(path, "r");
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SafetensorsError(`${path}: not a regular file`);
    const prefix = new Uint8Array(8);
    if (st.size >= 8) readExactly(fd, prefix, 0, path);
    const n = checkHeaderLength(path, prefix, st.size);
    const header = new Uint8Array(n);
    readExactly(fd, header, 8, path);
    const parsed = parseHeader(path, header, st.size);
    return new SafetensorsFile(path, fd, parsed.tensors, parsed.metadata);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** The header of a file (names, dtypes, shapes, metadata) without reading any tensor. */
export function inspectSafetensors(path: string): {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
} {
  const f = openSafetensors(path);
  try {
    return { tensors: new Map(f.keys().map((k) => [k, f.info(k)])), metadata: { ...f.metadata } };
  } finally {
    f.close();
  }
}

/**
 * Reads every tensor (or those passing `filter`), in file order. On an error
 * the tensors read so far are disposed.
 */
export function loadSafetensors(
  path: string,
  o: LoadOptions = {},
): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const f = openSafetensors(path);
  const tensors = new Map<string, Tensor>();
  try {
    for (const name of f.keys()) {
      if (o.filter && !o.filter(name)) continue;
      const stored = f.info(name).dtype;
      const dtype = o.dtype && isFloating(stored) ? o.dtype : undefined;
      tensors.set(name, f.get(name, { dtype, device: o.device, mmap: o.mmap }));
    }
    return { tensors, metadata: { ...f.metadata } };
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  } finally {
    f.close();
  }
}

// Descending alignment, as the reference writer sorts, so that every tensor
// starts at a multiple of its element size (the header is padded to 8).
export const ALIGN_RANK: Record<DType, number> = {
  int64: 9,
  float64: 8,
  float32: 7,
  int32: 6,
  bfloat16: 5,
  float16: 4,
  int16: 3,
  int8: 2,
  uint8: 1,
  bool: 0,
};

// The reference reader (serde_json) refuses escaped lone surrogates, which JSON.stringify writes.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

interface Planned {
  name: string;
  nameBytes: Buffer;
  tensor: Tensor;
  dtype: DType;
  shape: number[];
  byteLength: number;
}

function plan(path: string, tensors: Map<string, Tensor> | Record<string, Tensor>): Planned[] {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const seen = new Set<string>();
  const out: Planned[] = [];
  for (const [name, tensor] of entries) {
    const what = `${path}: tensor ${JSON.stringify(name)}`;
    if (typeof name !== "string" || name.length === 0)
      throw new SafetensorsError(`${path}: tensor names must be non-empty strings`);
    if (name === "__metadata__") throw new SafetensorsError(`${what}: the name is reserved for metadata`);
    if (LONE_SURROGATE.test(name))
      throw new SafetensorsError(`${what}: the name is not valid Unicode (lone surrogate)`);
    if (seen.has(name)) throw new SafetensorsError(`${what}: duplicate name`);
    seen.add(name);
    if (!(tensor instanceof Tensor)) throw new SafetensorsError(`${what}: not a Tensor`);
    if (tensor.disposed) throw new SafetensorsError(`${what}: the tensor is disposed`);
    const { dtype, shape, numel } = tensor;
    out.push({ name, nameBytes: Buffer.from(name, "utf8"), tensor, dtype, shape, byteLength: numel * BYTES[dtype] });
  }
  out.sort((a, b) => ALIGN_RANK[b.dtype] - ALIGN_RANK[a.dtype] || Buffer.compare(a.nameBytes, b.nameBytes));
  return out;
}

function checkMetadata(path: string, metadata: Record<string, string>): void {
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
    throw new SafetensorsError(`${path}: metadata must be an object of strings`);
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(`${path}: metadata value for ${JSON.stringify(k)} must be a string, got ${typeof v}`);
    }
    if (LONE_SURROGATE.test(k) || LONE_SURROGATE.test(v)) {
      throw new SafetensorsError(`${path}: metadata ${JSON.stringify(k)} is not valid Unicode (lone surrogate)`);
    }
  }
}

/** The header bytes: compact JSON, `__metadata__` first, tensors in data order, space-padded to a multiple of 8. */
function headerBytes(planned: Planned[], metadata: Record<string, string> | undefined): Buffer {
  // Built by hand: a JS object would move integer-like keys ("0", "1") to the front.
  const pairs = (entries: [string, string][]) => entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",");
  const entries: [string, string][] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort();
    entries.push(["__metadata__", `{${pairs(keys.map((k) => [k, JSON.stringify(metadata[k])]))}}`]);
  }
  let offset = 0;
  for (const p of planned) {
    const info = { dtype: DTYPE_TO_FILE[p.dtype], shape: p.shape, data_offsets: [offset, offset + p.byteLength] };
    entries.push([p.name, JSON.stringify(info)]);
    offset += p.byteLength;
  }
  const text = `{${pairs(entries)}}`;
  const raw = Buffer.from(text, "utf8");
  const padded = Buffer.alloc(raw.length + ((8 - (raw.length % 8)) % 8), 0x20);
  raw.copy(padded);
  return padded;
}

/** The bytes of one tensor, from a zero-copy view of a contiguous CPU copy; `use` must not keep them. */
function withBytes(p: Planned, use: (bytes: Uint8Array) => void): void {
  let src = p.tensor;
  let owned: Tensor | undefined;
  try {
    // One tensor at a time, so a GPU model needs host memory for its largest tensor only.
    if (src.device !== "cpu") src = owned = src.cpu();
    if (!isContiguous(src)) {
      const c = src.contiguous();
      owned?.dispose();
      src = owned = c;
    }
    const check = (bytes: Uint8Array) => {
      if (bytes.byteLength !== p.byteLength) {
        throw new SafetensorsError(
          `tensor ${JSON.stringify(p.name)}: ${bytes.byteLength} bytes, expected ${p.byteLength}`,
        );
      }
      use(bytes);
    };
    if (p.byteLength === 0) check(new Uint8Array(0));
    else src.withBytes(check);
  } finally {
    owned?.dispose();
  }
}

/**
 * Writes tensors (on any device, contiguous or not) and string metadata to
 * `path`, atomically: on any error `path` is untouched and no temp file stays.
 */
export function saveSafetensors(
  path: string,
  tensors: Map<string, Tensor> | Record<string, Tensor>,
  metadata?: Record<string, string>,
): void {
  if (metadata !== undefined) checkMetadata(path, metadata);
  const planned = plan(path, tensors);
  const header = headerBytes(planned, metadata);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.length));
  writeFileAtomic(path, (fd) => {
    writeAll(fd, prefix);
    writeAll(fd, header);
    for (const p of planned) withBytes(p, (bytes) => writeAll(fd, bytes));
  });
}
