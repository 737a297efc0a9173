// measureExtraction (src/demo/lab-extraction.ts) on a tiny "fine-tune": a
// random tiny model and the same model with every weight nudged. At the
// largest rank the modules kohya's LoRA covers are exact (all but the 3×3
// convs, capped at rank in_channels) and its pictures come closer to the
// tuned model's than a rank-1 LoRA's.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { measureExtraction } from "../../src/demo/lab-extraction.js";
import { disposeAll, Generator, randn, scope } from "../../src/engine/index.js";
import { loadCheckpoint, saveCheckpoint } from "../../src/formats/checkpoint.js";
import { checkLeaks, tempDir } from "../helpers.js";
import { tinyTokenizerDir, writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

test("extraction: full-rank pictures closer to the tuned model than rank 1's, covered linear modules exact", () => {
  const dir = tempDir("atelier-lab-extraction-");
  const [base, tuned] = [join(dir, "base.safetensors"), join(dir, "tuned.safetensors")];
  writeTinyCheckpoint(base, 3);
  const ck = loadCheckpoint(base);
  const g = new Generator(4);
  const nudged = scope(() => {
    const out: Record<string, Map<string, ReturnType<typeof randn>>> = {};
    for (const [c, sd] of Object.entries(ck.components))
      out[c] = new Map(
        [...sd!].map(([k, t]) => [k, t.add(randn(t.shape, { generator: g }).mul(0.05 * (t.abs().mean().item() || 1)))]),
      );
    return out;
  });
  g.dispose();
  saveCheckpoint(nudged, tuned, { layout: "ldm", configs: ck.info.configs });
  disposeAll([ck.components, nudged]);
  const rows = measureExtraction(base, tuned, {
    dims: [1, 64],
    clampQuantiles: [null],
    prompts: ["a star"],
    seeds: [1, 2],
    steps: 4,
    size: 64,
    tokenizerDir: tinyTokenizerDir(),
    work: join(dir, "work"),
  });
  const at = (dim: number, clamp: number | null) => rows.find((r) => r.dim === dim && r.clampQuantile === clamp)!;
  assert.equal(rows.length, 2);
  assert.ok(at(64, null).medianRelError < 1e-5, `median ${at(64, null).medianRelError}`);
  assert.ok(at(1, null).medianRelError > 0.5, `rank 1 keeps little of a random nudge: ${at(1, null).medianRelError}`);
  assert.ok(at(64, null).pictureGap < at(1, null).pictureGap, JSON.stringify(rows));
});
