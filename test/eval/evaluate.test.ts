// evaluate() end to end on tiny random models: the report's shape, the same
// seeds for both models, a LoRA attached and taken off again, no leaks.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { Generator } from "../../src/engine/index.js";
import { type EvalReport, evaluate, evaluateModel, reportJson } from "../../src/eval/evaluate.js";
import { defaultSubject, parseSubjectSpec, resolveSubject } from "../../src/eval/subject.js";
import { formatEvalTable } from "../../src/eval/table.js";
import { disposeStableDiffusion } from "../../src/models/stable-diffusion.js";
import { checkLeaks, tempDir } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const base = tinyStableDiffusion(3);
const tuned = tinyStableDiffusion(4);
const dir = tempDir("atelier-eval-");
after(() => {
  disposeStableDiffusion(base);
  disposeStableDiffusion(tuned);
  rmSync(dir, { recursive: true, force: true });
});

const options = { samples: 2, steps: 2, batch: 2, width: 32, height: 32 };
const two = [defaultSubject(), resolveSubject(parseSubjectSpec("zwx:circle:blue"))];
const HEADLINES = ["identity", "class_preservation", "prompt_following", "bleed"] as const;

function checkScores(s: EvalReport["evaluated"], bleed: boolean): void {
  for (const k of HEADLINES) {
    const v = s[k];
    assert.ok(v === null || (typeof v === "number" && v >= 0 && v <= 1), `${k} = ${v}`);
    assert.ok(`${k}_details` in s, `${k}_details`);
  }
  assert.equal(typeof s.identity, "number");
  assert.equal(typeof s.class_preservation, "number");
  assert.equal(typeof s.prompt_following, "number");
  assert.equal(s.bleed_details === null, !bleed);
}

test("two subjects: every headline for both models, per-prompt readings, a table", () => {
  const progress: string[] = [];
  const report = evaluate({
    model: tuned,
    base,
    subjects: two,
    options: { ...options, onProgress: (i, n, what) => progress.push(`${i}/${n} ${what}`) },
    names: { model: "tuned", base: "base" },
  });
  // 2 identity + 2 class ("a star", "a circle") + 4 + 5 following prompts, one batch each, for each model.
  assert.equal(report.per_prompt.length, 13);
  assert.equal(progress.length, 26);
  assert.deepEqual(
    report.per_prompt.map((p) => p.kind).join(","),
    "identity,identity,class,class,following,following,following,following,following,following,following,following,following",
  );
  assert.equal(report.version, 1);
  assert.deepEqual(
    { ...report.settings },
    {
      samples: 2,
      seed: 1000,
      steps: 2,
      sampler: "ddim",
      cfg: 5,
      batch: 2,
      width: 32,
      height: 32,
      model: "tuned",
      base: "base",
      lora: null,
      same_model: false,
      prompts: 13,
    },
  );
  assert.deepEqual(report.subjects[1], {
    token: "zwx",
    class: "circle",
    signature: { shape: "circle", colour: "blue", dot: null },
    seen_backgrounds: null,
  });
  checkScores(report.evaluated, true);
  checkScores(report.base, true);
  assert.equal(report.base.class_preservation, 1);
  assert.equal(report.evaluated.bleed_details!.pairs.length, 2);
  assert.equal(report.evaluated.class_preservation_details!.per_class.length, 2);
  assert.equal(typeof report.evaluated.class_preservation_details!.pixel_distance, "number");
  for (const p of report.per_prompt) {
    assert.equal(p.base.samples.length, 2);
    assert.equal(p.evaluated.samples.length, 2);
    assert.equal(p.evaluated.subject === null, p.kind === "class");
    assert.equal(p.evaluated.background === null, p.kind !== "following");
  }
  const json = JSON.parse(reportJson(report));
  assert.deepEqual(Object.keys(json.evaluated).sort(), [
    "bleed",
    "bleed_details",
    "class_preservation",
    "class_preservation_details",
    "identity",
    "identity_details",
    "prompt_following",
    "prompt_following_details",
  ]);
  const table = formatEvalTable(report);
  for (const row of ["identity", "class preservation", "prompt following", "bleed", "  zwx"])
    assert.match(table, new RegExp(`^${row}\\s`, "m"), row);
  assert.match(table, /^metric\s+base\s+evaluated\s+change\s+better$/m);
});

test("the same seeds give the same readings; the base against itself is marked and unchanged", () => {
  const a = evaluateModel(base, [defaultSubject()], options);
  const b = evaluateModel(base, [defaultSubject()], options);
  assert.deepEqual(
    a.map((r) => r.samples),
    b.map((r) => r.samples),
  );
  const report = evaluate({ model: base, base, subjects: [defaultSubject()], options });
  assert.equal(report.settings.same_model, true);
  assert.deepEqual(report.evaluated, report.base);
  assert.equal(report.evaluated.class_preservation, 1);
  assert.equal(report.evaluated.class_preservation_details!.changed, 0);
  assert.equal(report.evaluated.class_preservation_details!.pixel_distance, 0);
  assert.equal(report.evaluated.bleed, null);
  assert.match(formatEvalTable(report), /the evaluated model is the base itself/);
});

test("a LoRA is attached for the evaluated samples only and removed afterwards", () => {
  const path = join(dir, "tiny-lora.safetensors");
  const generator = new Generator(9);
  const net = injectLora(base, { rank: 2, generator });
  generator.dispose();
  try {
    saveLora(path, net);
  } finally {
    net.remove();
  }
  const params = base.unet.parameters().length + base.textEncoder.parameters().length;
  const report = evaluate({ model: base, base, subjects: [defaultSubject()], lora: { path, scale: 0.5 }, options });
  assert.equal(report.settings.same_model, false);
  assert.deepEqual(report.settings.lora, { path, scale: 0.5 });
  checkScores(report.evaluated, false);
  assert.equal(base.unet.parameters().length + base.textEncoder.parameters().length, params);
  assert.throws(
    () =>
      evaluate({
        model: base,
        base,
        subjects: [defaultSubject()],
        lora: { path: join(dir, "nope.safetensors") },
        options,
      }),
    /nope\.safetensors: no such file/,
  );
});

test("bad options are refused before any sampling", () => {
  assert.throws(
    () => evaluate({ model: base, base, subjects: [defaultSubject()], options: { samples: 0 } }),
    /samples/,
  );
  assert.throws(
    () => evaluate({ model: base, base, subjects: [defaultSubject()], options: { sampler: "plms" } }),
    /unknown sampler 'plms'; valid: ddpm, ddim/,
  );
  assert.throws(() => evaluate({ model: base, base, subjects: [], options }), /no subject/);
});
