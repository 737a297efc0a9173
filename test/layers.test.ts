// The layout rules of docs/design.md as tests: every import in src/ points
// down the layer order of §2 (read from that page, so the page and the test
// cannot drift apart), and no TypeScript file in src/ or test/ is over the
// 600 lines of §3.7. Imports are read with TypeScript's own pre-processor
// (ts.preProcessFile), which sees static, type-only and dynamic imports and
// re-exports, and skips comments and strings.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { test } from "node:test";
import ts from "typescript";
import { repoRoot } from "./helpers.js";

const MAX_LINES = 600;

/** Every .ts file under `dir`, as paths relative to the repository root. */
function tsFiles(dir: string): string[] {
  return readdirSync(join(repoRoot, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => relative(repoRoot, join(e.parentPath, e.name)))
    .sort();
}

/** The layers of docs/design.md §2, lowest first: `engine`, `nn`, …; a file directly in src/ is `index.ts`. */
function layerOrder(designText: string): string[] {
  const section = designText.split(/^## /m).find((s) => s.startsWith("2."));
  assert.ok(section, "docs/design.md has no section 2");
  const block = section.match(/```\n([\s\S]*?)```/);
  assert.ok(block, "docs/design.md §2 has no layer block");
  return [...block[1].matchAll(/^src\/(\w+\/|index\.ts)/gm)].map((m) => m[1].replace(/\/$/, ""));
}

/** `engine` for src/engine/x.ts and src/engine/ops/y.ts; `index.ts` for a file directly in src/; null outside src/. */
function layerOf(path: string): string | null {
  const parts = relative(join(repoRoot, "src"), resolve(repoRoot, path)).split(sep);
  if (parts[0] === ".." || parts[0] === "") return null;
  return parts.length === 1 ? "index.ts" : parts[0];
}

interface Import {
  file: string;
  line: number;
  target: string;
}

/** The relative imports of one file (packages such as node:fs are no layer). */
function importsOf(file: string): Import[] {
  const text = readFileSync(join(repoRoot, file), "utf8");
  const info = ts.preProcessFile(text, true, true);
  return info.importedFiles
    .filter((f) => f.fileName.startsWith("."))
    .map((f) => ({
      file,
      line: text.slice(0, f.pos).split("\n").length,
      target: relative(repoRoot, resolve(repoRoot, dirname(file), f.fileName)),
    }));
}

const order = layerOrder(readFileSync(join(repoRoot, "docs", "design.md"), "utf8"));

test("docs/design.md §2 names each layer once, engine first", () => {
  assert.equal(order[0], "engine");
  assert.equal(new Set(order).size, order.length, `a layer is listed twice: ${order.join(" < ")}`);
  for (const l of ["nn", "formats", "schedulers", "models", "adapters", "infer", "train", "cli"]) {
    assert.ok(order.includes(l), `${l} is missing from ${order.join(" < ")}`);
  }
});

test("every folder of src/ has a place in the layer order of docs/design.md §2", () => {
  const layers = new Set(tsFiles("src").map((f) => layerOf(f)));
  const unplaced = [...layers].filter((l) => l !== null && !order.includes(l));
  assert.deepEqual(unplaced, [], `place these in docs/design.md §2 (order now: ${order.join(" < ")})`);
});

test("src/ imports only from its own layer or a lower one, and never from outside src/", () => {
  const rank = new Map(order.map((l, i) => [l, i]));
  const wrong: string[] = [];
  for (const file of tsFiles("src")) {
    const from = layerOf(file)!;
    for (const imp of importsOf(file)) {
      const to = layerOf(imp.target);
      if (to === null) wrong.push(`${file}:${imp.line} imports ${imp.target}, outside src/`);
      else if ((rank.get(to) ?? -1) > (rank.get(from) ?? Number.MAX_SAFE_INTEGER))
        wrong.push(`${file}:${imp.line} (${from}) imports ${imp.target} (${to}, a layer above)`);
    }
  }
  assert.deepEqual(wrong, [], `layer order: ${order.join(" < ")}`);
});

test("the import reader sees static, type-only, dynamic and re-exported imports, not comments", () => {
  const info = ts.preProcessFile(
    [
      'import { a } from "../engine/a.js";',
      'import type { B } from "../nn/b.js";',
      'export { c } from "../formats/c.js";',
      'const d = await import("../models/d.js");',
      '// import { e } from "../cli/e.js";',
      "const s = \"import { f } from '../cli/f.js'\";",
    ].join("\n"),
    true,
    true,
  );
  assert.deepEqual(
    info.importedFiles.map((f) => f.fileName),
    ["../engine/a.js", "../nn/b.js", "../formats/c.js", "../models/d.js"],
  );
});

test(`no TypeScript file in src/ or test/ is over ${MAX_LINES} lines (docs/design.md §3.7)`, () => {
  const long = [...tsFiles("src"), ...tsFiles("test")]
    .map((f) => ({ f, lines: readFileSync(join(repoRoot, f), "utf8").split("\n").length - 1 }))
    .filter((x) => x.lines > MAX_LINES)
    .map((x) => `${x.f}: ${x.lines} lines`);
  assert.deepEqual(long, []);
});
