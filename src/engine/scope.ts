// Explicit ownership of native tensors. JS has no destructors and GPU memory
// cannot wait for the garbage collector, so every tensor is freed on purpose:
// `t.dispose()`, or `scope(fn)`, which frees all tensors made inside `fn`
// except those it returns (they move to the enclosing scope) and those marked
// with `keep()` (they live until disposed by hand).
import { native } from "./native.js";

/** What a scope can own: a Tensor, without importing the class (no cycle). */
export interface Owned {
  dispose(): void;
  readonly disposed: boolean;
  kept: boolean;
}

export const OWNED: unique symbol = Symbol("atelier.owned");

const frames: Owned[][] = [];

/** Called by every new Tensor: the innermost open scope owns it. */
export function track(t: Owned): void {
  const frame = frames[frames.length - 1];
  if (frame) frame.push(t);
}

function isOwned(v: unknown): v is Owned {
  return typeof v === "object" && v !== null && OWNED in v;
}

/** Tensors reachable from a scope's return value: through arrays, Maps and plain objects. */
function collect(value: unknown, into: Set<Owned>, seen: Set<unknown>): void {
  if (typeof value !== "object" || value === null || seen.has(value)) return;
  seen.add(value);
  if (isOwned(value)) {
    into.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) collect(v, into, seen);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, into, seen);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, into, seen);
  }
}

function release(frame: Owned[], survivors: Set<Owned>): void {
  const parent = frames[frames.length - 1];
  for (const t of frame) {
    if (t.disposed || t.kept) continue;
    if (survivors.has(t)) {
      if (parent) parent.push(t);
    } else {
      t.dispose();
    }
  }
}

/**
 * Runs `fn` and frees every tensor it made, except what it returns and what it
 * `keep()`s. `fn` must be synchronous; see `scopeAsync`.
 */
export function scope<T>(fn: () => T): T {
  const frame: Owned[] = [];
  frames.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    frames.pop();
    release(frame, new Set());
    throw e;
  }
  frames.pop();
  if (result instanceof Promise) {
    release(frame, new Set());
    throw new Error("scope(fn): fn returned a Promise; use scopeAsync for asynchronous work");
  }
  if (frame.length === 0) return result; // nothing made: nothing to free (the common tiny scope)
  release(frame, survivorsOf(result));
  return result;
}

/** The tensors a scope's result holds; a primitive or a lone tensor skips the walk. */
function survivorsOf(result: unknown): Set<Owned> {
  if (typeof result !== "object" || result === null) return new Set();
  if (isOwned(result)) return new Set([result]);
  const survivors = new Set<Owned>();
  collect(result, survivors, new Set());
  return survivors;
}

/**
 * The asynchronous form of scope. Tensors made by other code that runs while
 * `fn` awaits would land in this scope too, so keep concurrent async scopes apart.
 */
export async function scopeAsync<T>(fn: () => Promise<T>): Promise<T> {
  const frame: Owned[] = [];
  frames.push(frame);
  const close = () => {
    const i = frames.lastIndexOf(frame);
    if (i >= 0) frames.splice(i, 1);
  };
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    close();
    release(frame, new Set());
    throw e;
  }
  close();
  const survivors = new Set<Owned>();
  collect(result, survivors, new Set());
  release(frame, survivors);
  return result;
}

/** Exempts tensors from every scope: they live until `dispose()`. Returns its argument. */
export function keep<T>(value: T): T {
  const found = new Set<Owned>();
  collect(value, found, new Set());
  for (const t of found) t.kept = true;
  return value;
}

/** Disposes every tensor reachable from `value` (arrays, Maps, plain objects). */
export function disposeAll(value: unknown): void {
  const found = new Set<Owned>();
  collect(value, found, new Set());
  for (const t of found) t.dispose();
}

/** The number of native tensors alive now; tests check that it returns to its start. */
export function liveTensors(): number {
  return native.liveCount();
}
