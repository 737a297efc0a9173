// A shortened `atelier demo` on the shipped shapes-world base, for Dreambooth +
// prior preservation and for LoRA: the report and eval.json are written, and
// "a sks star" samples show the subject's shape and colour clearly more often
// than the base model's on the same prompts and seeds. Full identity (the red
// dot too) is not reached by the current base (docs/shapes-world.md): that
// check is a todo until the base is trained longer.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { evalTable, runDemo } from "../../src/demo/demo.js";
import type { Scores } from "../../src/eval/score.js";
import { shapesBasePath } from "../../src/shapes/base-path.js";
import { checkLeaks } from "../helpers.js";

const STEPS = 150;
let evalJson: { models: Record<string, { evaluated: Scores; base: Scores }> } | undefined;

const root = mkdtempSync(join(tmpdir(), "atelier-demo-"));
after(() => rmSync(root, { recursive: true, force: true }));
checkLeaks();

test("the shortened demo learns the subject's shape and colour, and writes its report", async () => {
  const out = join(root, "demo");
  const r = await runDemo({ out, base: shapesBasePath(), quick: true, steps: STEPS, samples: 8, log: () => {} });
  for (const f of ["report.html", "eval.json"]) assert.ok(existsSync(join(out, f)), `${f} is written`);
  const json = JSON.parse(readFileSync(join(out, "eval.json"), "utf8"));
  for (const name of ["dreambooth", "lora"]) {
    const m = json.models[name];
    for (const field of ["identity", "class_preservation", "prompt_following", "bleed"]) {
      assert.ok(field in m.evaluated && field in m.base, `${name}: eval.json has ${field} for both models`);
    }
    const [mine, base] = [m.evaluated, m.base].map((s: Scores) => s.identity_details!.per_subject[0]);
    assert.ok(mine.shape >= base.shape + 0.25, `${name}: star share ${mine.shape} vs the base's ${base.shape}`);
    assert.ok(mine.colour >= base.colour + 0.15, `${name}: yellow share ${mine.colour} vs the base's ${base.colour}`);
  }
  evalJson = json;
  const html = readFileSync(r.report, "utf8");
  assert.match(html, /<svg/, "the loss curves are drawn");
  assert.match(html, /data:image\/png;base64,/, "the sample grids are embedded");
});

test("identity (shape, colour and the red dot) clearly above the base's", {
  todo: "the base is undertrained: samples do not draw the dot yet",
}, () => {
  assert.ok(evalJson, "the demo ran");
  for (const m of Object.values(evalJson.models)) assert.ok(m.evaluated.identity! >= m.base.identity! + 0.25);
});

test("evalTable: a row per model, the four metrics as columns", () => {
  const scores = { identity: 0.5, class_preservation: 0.9, prompt_following: 0.25, bleed: null } as never;
  const t = evalTable({ base: scores, dreambooth: scores });
  assert.deepEqual(t.columns, ["model", "identity", "class_preservation", "prompt_following", "bleed"]);
  assert.deepEqual(t.rows[1], { label: "dreambooth", values: [0.5, 0.9, 0.25, null] });
});
