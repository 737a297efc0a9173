// Test files clean up after themselves: a few of them run with TMPDIR set to
// a fresh folder, which must be empty again when they are done.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { repoRoot } from "./helpers.js";

test("test files leave nothing in the temporary folder", () => {
  const tmp = mkdtempSync(join(tmpdir(), "atelier-tmpcheck-"));
  try {
    const files = ["train/workspace", "train/config", "adapters/registry", "formats/ckpt", "formats/safetensors"].map(
      (f) => join(repoRoot, "dist", "test", `${f}.test.js`),
    );
    const r = spawnSync(process.execPath, ["--test", ...files], {
      env: { ...process.env, TMPDIR: tmp },
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stdout.slice(-2000) + r.stderr.slice(-2000));
    assert.deepEqual(readdirSync(tmp), [], "left behind");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
