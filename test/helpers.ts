// Shared test helpers: tolerance checks and the tensor-leak check every test file uses.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, beforeEach } from "node:test";
import { fileURLToPath } from "node:url";
import { liveTensors, Tensor } from "../src/engine/index.js";

/** The repository root (tests run from dist/test/…). */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
  return dir;
})();

/** Files recorded by scripts/record-*.py, kept in the repository. */
export const testFixture = (name: string): string => join(repoRoot, "test", "fixtures", name);

/**
 * The shared fixtures, ../shared/fixtures beside the checkout: reference outputs of diffusers,
 * transformers, LyCORIS and kohya.
 */
export const sharedFixture = (path: string): string => join(repoRoot, "..", "shared", "fixtures", path);

const made: string[] = [];
process.on("exit", () => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A fresh temporary folder (prefix + random), removed when the test process exits, whatever happened. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** A fresh folder per call under one temporary folder (removed after the file's tests): `caseFile()` → …/case-N/t.safetensors. */
export function caseFiles(prefix: string): (name?: string) => string {
  const dir = tempDir(prefix);
  let counter = 0;
  return (name = "t.safetensors") => {
    const d = join(dir, `case-${counter++}`);
    mkdirSync(d);
    return join(d, name);
  };
}

/** Every test in the calling file must leave the live native tensor count where it found it. */
export function checkLeaks(): void {
  let start = 0;
  beforeEach(() => {
    start = liveTensors();
  });
  afterEach(() => {
    assert.equal(liveTensors(), start, `tensors leaked: ${liveTensors() - start}`);
  });
}

type Numbers = Tensor | ArrayLike<number> | readonly number[];

function toNumbers(v: Numbers): number[] {
  if (v instanceof Tensor) return v.toArray();
  return Array.from(v as ArrayLike<number>, Number);
}

/**
 * |a − b| <= atol + rtol·|b| element-wise (b is the reference), and equal
 * shapes where both are tensors. Reports the worst element.
 */
export function assertClose(
  actual: Numbers,
  expected: Numbers,
  o: { atol?: number; rtol?: number; what?: string } = {},
) {
  const atol = o.atol ?? 1e-5;
  const rtol = o.rtol ?? 1e-4;
  const what = o.what ? `${o.what}: ` : "";
  if (actual instanceof Tensor && expected instanceof Tensor) {
    assert.deepEqual(actual.shape, expected.shape, `${what}shape`);
  }
  const a = toNumbers(actual);
  const b = toNumbers(expected);
  assert.equal(a.length, b.length, `${what}length ${a.length} != ${b.length}`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < a.length; i++) {
    const excess = Math.abs(a[i] - b[i]) - (atol + rtol * Math.abs(b[i]));
    if (excess > worstExcess || Number.isNaN(a[i]) !== Number.isNaN(b[i])) {
      worstExcess = Number.isNaN(excess) ? Number.POSITIVE_INFINITY : excess;
      worst = i;
    }
  }
  if (worst >= 0) {
    assert.fail(`${what}element ${worst}: ${a[worst]} vs reference ${b[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}
