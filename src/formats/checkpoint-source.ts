// One interface over the files a checkpoint's tensors come from: a
// safetensors file, a torch.save file (read with the restricted unpickler),
// or several shards; plus a renamed view used to accept older key spellings.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { type DType, isFloating, type Tensor } from "../engine/index.js";
import { CheckpointError, type KeyShapes } from "./checkpoint-detect.js";
import { type CkptFile, openCkpt, type Scalar } from "./ckpt.js";
import { openSafetensors } from "./safetensors.js";

export interface GetOptions {
  /** Cast floating-point tensors to this dtype (integer and bool tensors keep theirs). */
  dtype?: DType;
  device?: string;
}

export interface Source extends KeyShapes {
  readonly path: string;
  readonly kind: "safetensors" | "ckpt";
  readonly metadata: Record<string, Scalar>;
  get(key: string, o?: GetOptions): Tensor;
  /** Runs `fn` reading shared storages once (torch files). */
  batch<T>(fn: () => T): T;
  close(): void;
}

/**
 * Whether a file starts as a safetensors file: a u64 header length that fits
 * the file, then "{" after any JSON whitespace (serde_json, which the
 * reference reader uses, allows it). A zip or pickle never passes: their
 * first 8 bytes read as a length larger than the file, or byte 8 is not
 * whitespace.
 */
function looksLikeSafetensors(fd: number, size: number): boolean {
  const head = Buffer.alloc(8);
  if (size < 10 || readSync(fd, head, 0, 8, 0) < 8) return false;
  const len = head.readBigUInt64LE(0);
  if (len < 2n || len > BigInt(size - 8)) return false;
  const end = 8 + Number(len);
  const buf = Buffer.alloc(4096);
  for (let pos = 8; pos < end; ) {
    const got = readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
    if (got <= 0) return false;
    for (let i = 0; i < got; i++) {
      const b = buf[i];
      if (b === 0x7b) return true;
      if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return false;
    }
    pos += got;
  }
  return false;
}

/** What a file is, from its first bytes: safetensors (u64 header length, then "{"), a torch zip, or a pickle. */
export function sniff(path: string): "safetensors" | "ckpt" {
  const fd = openSync(path, "r");
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new CheckpointError(`${path}: not a regular file`);
    const head = Buffer.alloc(9);
    const n = readSync(fd, head, 0, 9, 0);
    if ((n >= 9 && head[8] === 0x7b) || looksLikeSafetensors(fd, st.size)) return "safetensors";
    if (n >= 4 && (head.readUInt32LE(0) === 0x04034b50 || head.readUInt32LE(0) === 0x06054b50 || head[0] === 0x80))
      return "ckpt";
    throw new CheckpointError(
      `${path}: neither a safetensors file nor a PyTorch (.ckpt/.pt/.bin) file (${n} bytes read)`,
    );
  } finally {
    closeSync(fd);
  }
}

function castFor(stored: DType, o: GetOptions): GetOptions {
  return { dtype: o.dtype && isFloating(stored) ? o.dtype : undefined, device: o.device };
}

export function openSource(path: string): Source {
  if (sniff(path) === "safetensors") {
    const f = openSafetensors(path);
    return {
      path,
      kind: "safetensors",
      metadata: { ...f.metadata },
      keys: () => f.keys(),
      has: (k) => f.has(k),
      info: (k) => f.info(k),
      get: (k, o = {}) => f.get(k, castFor(f.info(k).dtype, o)),
      batch: (fn) => fn(),
      close: () => f.close(),
    };
  }
  const f: CkptFile = openCkpt(path);
  return {
    path,
    kind: "ckpt",
    metadata: f.metadata,
    keys: () => f.keys(),
    has: (k) => f.has(k),
    info: (k) => f.info(k),
    get: (k, o = {}) => f.get(k, o),
    batch: (fn) => f.batch(fn),
    close: () => f.close(),
  };
}

/** Several files (shards) seen as one; a key in two of them is an error. */
export function combineSources(path: string, sources: Source[]): Source {
  const owner = new Map<string, Source>();
  for (const s of sources) {
    for (const k of s.keys()) {
      if (owner.has(k))
        throw new CheckpointError(`${path}: tensor ${k} is in both ${owner.get(k)!.path} and ${s.path}`);
      owner.set(k, s);
    }
  }
  const of = (k: string): Source => {
    const s = owner.get(k);
    if (!s) throw new CheckpointError(`${path}: no tensor named ${JSON.stringify(k)}`);
    return s;
  };
  return {
    path,
    kind: sources[0]?.kind ?? "safetensors",
    metadata: Object.assign({}, ...sources.map((s) => s.metadata)),
    keys: () => [...owner.keys()],
    has: (k) => owner.has(k),
    info: (k) => of(k).info(k),
    get: (k, o) => of(k).get(k, o),
    batch: (fn) => sources.reduceRight<() => ReturnType<typeof fn>>((inner, s) => () => s.batch(inner), fn)(),
    close: () => {
      for (const s of sources) s.close();
    },
  };
}

/**
 * The source under new names: `rename(k)` gives a key's canonical name (or
 * undefined to hide it). Two keys with one canonical name are an error.
 */
export function renamedSource(src: Source, rename: (k: string) => string | undefined): Source {
  const original = new Map<string, string>();
  for (const k of src.keys()) {
    const n = rename(k);
    if (n === undefined) continue;
    const seen = original.get(n);
    if (seen !== undefined)
      throw new CheckpointError(`${src.path}: ${seen} and ${k} are the same tensor under two spellings`);
    original.set(n, k);
  }
  const of = (k: string): string => {
    const o = original.get(k);
    if (o === undefined) throw new CheckpointError(`${src.path}: no tensor named ${JSON.stringify(k)}`);
    return o;
  };
  return {
    ...src,
    keys: () => [...original.keys()],
    has: (k) => original.has(k),
    info: (k) => src.info(of(k)),
    get: (k, o) => src.get(of(k), o),
  };
}

/** Reads a small tensor as float32 values. */
export function readFloats(src: Source, key: string): number[] {
  const t = src.get(key, { dtype: "float32" });
  try {
    return t.toArray();
  } finally {
    t.dispose();
  }
}
