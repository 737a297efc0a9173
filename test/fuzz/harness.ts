// A seeded, in-process fuzz harness for the readers: a deterministic random
// source per case (so any case is rerun from seed, target and index alone),
// generic byte mutators, and a runner that times each case, classifies what
// it threw, and measures memory, native tensors and file descriptors before
// and after. Targets (test/fuzz/targets/) supply the seeds, the
// format-aware mutations and the call into the reader.
import { readdirSync } from "node:fs";
import { liveTensors } from "../../src/engine/index.js";
import { Sfc32 } from "../../src/engine/sfc32.js";

/** A case slower than this is a hang. */
export const HANG_MS = 5000;
/** A case that grows memory by more than this is a big allocation. */
export const BIG_ALLOCATION_BYTES = 2 ** 30;

export class Rng {
  readonly #g: Sfc32;
  constructor(...words: number[]) {
    this.#g = new Sfc32(words[0] ?? 0, words[1] ?? 0, words[2] ?? 0, words[3] ?? 0);
  }
  u32(): number {
    return this.#g.next32();
  }
  /** Uniform in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.u32() / 2 ** 32) * n);
  }
  /** Uniform in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** Small counts are likelier: 1 + a geometric number of extra ones, at most `max`. */
  count(max: number, p = 0.5): number {
    let n = 1;
    while (n < max && this.chance(p)) n++;
    return n;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** FNV-1a of a name, to give each target its own random stream. */
export function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The random source of one case: the same (seed, target, index) always gives the same case. */
export const caseRng = (seed: number, target: string, index: number): Rng =>
  new Rng(seed, hashName(target), index, 0x5eed);

// ---- byte mutators --------------------------------------------------------------------------

/** Integers that break length and size fields: boundaries of every width, signed and not. */
export const INTERESTING: readonly bigint[] = [
  0n,
  1n,
  2n,
  7n,
  8n,
  0x7fn,
  0x80n,
  0xffn,
  0x100n,
  0x7fffn,
  0x8000n,
  0xffffn,
  0x10000n,
  0x7fffffffn,
  0x80000000n,
  0xffffffffn,
  0x100000000n,
  2n ** 53n - 1n,
  2n ** 53n + 1n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
];

function writeUint(out: Uint8Array, at: number, width: number, little: boolean, v: bigint): void {
  const x = BigInt.asUintN(width * 8, v);
  for (let k = 0; k < width && at + k < out.length; k++) {
    const shift = BigInt(8 * (little ? k : width - 1 - k));
    out[at + k] = Number((x >> shift) & 0xffn);
  }
}

function readUint(data: Uint8Array, at: number, width: number, little: boolean): bigint {
  let v = 0n;
  for (let k = 0; k < width && at + k < data.length; k++) {
    const shift = BigInt(8 * (little ? k : width - 1 - k));
    v |= BigInt(data[at + k]) << shift;
  }
  return v;
}

/** Sets the integer field of `width` bytes at `at` to an interesting value, or nudges it. */
export function editIntField(rng: Rng, data: Uint8Array, at: number, width: number, little: boolean): void {
  const v = rng.chance(0.6)
    ? rng.pick(INTERESTING) + BigInt(rng.range(-1, 1))
    : readUint(data, at, width, little) + BigInt(rng.range(-16, 16));
  writeUint(data, at, width, little, v);
}

export interface ByteMutateOptions {
  /** Other inputs to splice from. */
  others?: readonly Uint8Array[];
  /** Inputs grow no larger than this. */
  maxLength?: number;
}

/** One to a few generic mutations: bit flips, byte sets, inserts, deletes, truncation, splicing, integer fields. */
export function mutateBytes(rng: Rng, input: Uint8Array, o: ByteMutateOptions = {}): Uint8Array {
  let data: Uint8Array = Uint8Array.from(input);
  const maxLength = o.maxLength ?? Math.max(4096, input.length * 2);
  const n = rng.count(6);
  for (let k = 0; k < n; k++) {
    const at = rng.int(data.length + 1);
    switch (rng.int(9)) {
      case 0: // bit flip
        if (data.length) data[Math.min(at, data.length - 1)] ^= 1 << rng.int(8);
        break;
      case 1: // byte set
        if (data.length) data[Math.min(at, data.length - 1)] = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(256)]);
        break;
      case 2: {
        // insert random or repeated bytes
        const len = rng.count(64, 0.8);
        if (data.length + len > maxLength) break;
        const ins = rng.chance(0.5) ? rng.bytes(len) : new Uint8Array(len).fill(rng.int(256));
        data = concat(data.subarray(0, at), ins, data.subarray(at));
        break;
      }
      case 3: {
        // delete a range
        const len = rng.count(64, 0.8);
        data = concat(data.subarray(0, at), data.subarray(Math.min(data.length, at + len)));
        break;
      }
      case 4: // truncate
        data = data.slice(0, at);
        break;
      case 5: {
        // duplicate a range
        const len = rng.count(256, 0.9);
        if (data.length + len > maxLength) break;
        data = concat(data.subarray(0, at), data.subarray(at, at + len), data.subarray(at));
        break;
      }
      case 6: {
        // splice: this input's head with another's tail
        const other = o.others?.length ? rng.pick(o.others) : data;
        const from = rng.int(other.length + 1);
        const joined = concat(data.subarray(0, at), other.subarray(from));
        if (joined.length <= maxLength) data = joined;
        break;
      }
      case 7: // an integer field of 1, 2, 4 or 8 bytes, either byte order
        if (data.length)
          editIntField(rng, data, Math.min(at, data.length - 1), rng.pick([1, 2, 4, 8]), rng.chance(0.7));
        break;
      default: {
        // overwrite a range with one byte
        const len = rng.count(32, 0.8);
        data.fill(rng.pick([0, 0x20, 0xff, rng.int(256)]), at, Math.min(data.length, at + len));
      }
    }
  }
  return data;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---- targets and their outcomes -------------------------------------------------------------

/** What the reference (where a target has one) says of an input. */
export type Reference = "valid" | "invalid" | "quirk";

export interface Outcome {
  /** The reader returned normally. */
  accepted: boolean;
  reference?: Reference;
  /** The reference's reason when it refuses ("InvalidOffset", …), to count by. */
  referenceCode?: string;
  /** The reference's full complaint (which tensor, where). */
  referenceDetail?: string;
  /** Both accepted, but the reader's result differs from the reference's. */
  mismatch?: string;
  /** What the reader threw, when the target caught it to report the reference's verdict too. */
  thrown?: unknown;
}

export interface Target<I> {
  readonly name: string;
  /** Whether the target compares with a reference (it then reports accepted-invalid and rejected-valid). */
  readonly hasReference: boolean;
  /** The reader's own, documented refusals; anything else it throws is a crash. */
  isOwnError(e: unknown): boolean;
  /** Valid (or realistic) inputs; case i < seeds.length runs seed i as it is. */
  seeds(): I[];
  /** A new case from the seeds. */
  generate(rng: Rng, seeds: readonly I[]): I;
  /** Runs the reader on an input; throws (or returns as `thrown`) what the reader throws. */
  run(input: I): Outcome;
  /** The input as bytes, to save a failing case. */
  toBytes(input: I): Uint8Array;
}

export type Status = "accepted" | "rejected" | "crash";

export interface CaseResult {
  index: number;
  status: Status;
  ms: number;
  /** For crashes: TypeError, RangeError, libtorch error, raw Z_DATA_ERROR, … */
  kind?: string;
  /** A refusal whose message shows an internal value (undefined, NaN, …). */
  unclear?: boolean;
  message?: string;
  outcome?: Outcome;
  leakedTensors: number;
  leakedFds: number;
  growthBytes: number;
}

// Messages of c10::Error that reach JS through the addon unchanged.
const LIBTORCH =
  /\[enforce fail|Exception raised from|c10::|CUDA error|DefaultCPUAllocator|Storage size calculation|Trying to create tensor|as_strided|Expected .* but got|INTERNAL ASSERT/;

/** What a crash is: the class (or origin) of what escaped the reader. */
export function crashKind(e: unknown): string {
  if (!(e instanceof Error)) return `non-Error thrown (${typeof e})`;
  if (LIBTORCH.test(e.message)) return "libtorch error";
  if (e instanceof RangeError && /call stack/.test(e.message)) return "stack overflow";
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string") return `raw ${e.name} ${code}`;
  if (e instanceof TypeError || e instanceof RangeError || e instanceof SyntaxError) return e.name;
  return e.constructor.name;
}

/** A message that leaks an internal value (undefined, NaN, [object …]) outside quoted names. */
export function unclearMessage(message: string): boolean {
  const unquoted = message.replace(/"(?:[^"\\]|\\.)*"|'[^']*'/g, "");
  return /\bundefined\b|\bNaN\b|\[object |^\s*$/.test(unquoted);
}

let fdsReadable = true;
function openFds(): number {
  if (!fdsReadable) return 0;
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    fdsReadable = false;
    return 0;
  }
}

/** Runs one case, measured: time, memory growth (RSS, peak RSS, array buffers), tensors and fds left open. */
export function runCase<I>(target: Target<I>, input: I, index: number): CaseResult {
  const live0 = liveTensors();
  const fds0 = openFds();
  const mem0 = process.memoryUsage();
  const peak0 = process.resourceUsage().maxRSS * 1024;
  const t0 = performance.now();
  let status: Status = "accepted";
  let kind: string | undefined;
  let message: string | undefined;
  let unclear = false;
  let outcome: Outcome | undefined;
  let thrown: { e: unknown } | undefined;
  try {
    outcome = target.run(input);
    if ("thrown" in outcome) thrown = { e: outcome.thrown };
  } catch (e) {
    thrown = { e };
    outcome = { accepted: false };
  }
  if (thrown) {
    const e = thrown.e;
    message = e instanceof Error ? e.message : String(e);
    if (target.isOwnError(e)) {
      status = "rejected";
      unclear = unclearMessage(message);
    } else {
      status = "crash";
      kind = crashKind(e);
    }
    outcome = { ...outcome, accepted: false, thrown: undefined };
  } else if (!outcome.accepted) status = "rejected";
  const ms = performance.now() - t0;
  const mem1 = process.memoryUsage();
  const peak1 = process.resourceUsage().maxRSS * 1024;
  const growthBytes = Math.max(mem1.rss - mem0.rss, peak1 - peak0, mem1.arrayBuffers - mem0.arrayBuffers);
  return {
    index,
    status,
    ms,
    kind,
    unclear,
    message: message && message.length > 300 ? `${message.slice(0, 299)}…` : message,
    outcome,
    leakedTensors: liveTensors() - live0,
    leakedFds: openFds() - fds0,
    growthBytes,
  };
}
