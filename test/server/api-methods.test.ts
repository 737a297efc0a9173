// Every training method the Train page offers runs as a studio job, and its
// result lands where generation finds it: a LyCORIS (LoHa) LoRA in
// models/Lora, a Textual Inversion embedding in embeddings/ under its word, a
// hypernetwork in models/hypernetworks under its name — each listed by the
// Library and usable by a generation job.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { type Studio, startStudio } from "../../src/server/studio.js";
import { call, createShapesModel, gentleEnv, studioDirs, subjectPictures, tinyLora, waitJob } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-methods-");
let studio: Studio;
let base: string;
before(async () => {
  subjectPictures(`${dirs.workspace}/datasets/star`, 2);
  studio = await startStudio({ workspace: dirs.workspace, port: 0, env: gentleEnv() });
  base = studio.url;
  await createShapesModel(base, "ddim");
});
after(async () => {
  await studio?.close();
});

async function train(name: string, config: Record<string, unknown>): Promise<Record<string, unknown>> {
  const job = await call(base, "POST", "/api/train", { name, config });
  assert.equal(job.status, 200, JSON.stringify(job.body));
  const done = await waitJob(base, job.body.id as number);
  assert.equal(done.status, "done", String(done.error));
  return done.result as Record<string, unknown>;
}

test("LoHa, Textual Inversion and hypernetwork jobs publish into the A1111 folders; generation uses them", async () => {
  const common: Record<string, unknown> = {
    ...tinyLora("shapes", "star", 2, 0),
    sample: { every_n_steps: 0, steps: 3, prompts: [] },
  };
  const loha = await train("lh", { ...common, lora: { algo: "loha", rank: 2 } });
  assert.equal(loha.lora, "models/Lora/lh.safetensors");

  const { use_lora: _u, lora: _l, ...plain } = common;
  const ti = await train("ti", {
    ...plain,
    method: "textual_inversion",
    learning_rate: 5e-3,
    textual_inversion: { token: "zq-star", init_text: "star", vectors: 2 },
    save: { every_n_steps: 0, formats: ["embedding_pt"] },
  });
  assert.equal(ti.embedding, "embeddings/zq-star.pt");

  const hn = await train("hn", {
    ...plain,
    method: "hypernetwork",
    hypernetwork: { name: "zq-hyper" },
    save: { every_n_steps: 0, formats: ["hypernetwork_pt"] },
  });
  assert.equal(hn.hypernetwork, "models/hypernetworks/zq-hyper.pt");

  const lib = (await call(base, "GET", "/api/library")).body as unknown as Record<string, { path: string }[]>;
  assert.deepEqual(
    lib.lora.map((f) => f.path),
    ["models/Lora/lh.safetensors"],
  );
  assert.deepEqual(
    lib.embeddings.map((f) => f.path),
    ["embeddings/zq-star.pt"],
  );
  assert.deepEqual(
    lib.hypernetworks.map((f) => f.path),
    ["models/hypernetworks/zq-hyper.pt"],
  );
  // the LoHa merged into the workspace model itself (a name, not a file); an unknown name refused
  const bad = await call(base, "POST", "/api/merge/lora", { name: "x", checkpoint: "nope", loras: [{ name: "lh" }] });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.field, "body.checkpoint", bad.body.error);
  const merge = await call(base, "POST", "/api/merge/lora", {
    name: "shapes-lh",
    checkpoint: "shapes",
    loras: [{ name: "lh" }],
  });
  assert.equal(merge.status, 200, JSON.stringify(merge.body));
  const merged = await waitJob(base, merge.body.id as number);
  assert.equal(merged.status, "done", String(merged.error));
  const r = merged.result as { output: string; weights_changed: number };
  assert.equal(r.output, "models/Stable-diffusion/shapes-lh.safetensors");
  assert.ok(r.weights_changed > 0, `${r.weights_changed} weights changed`);

  const gen = await call(base, "POST", "/api/generate", {
    model: "shapes",
    prompt: "a zq-star <lora:lh:1> <hypernet:zq-hyper:1>",
    steps: 2,
  });
  assert.equal(gen.status, 200, JSON.stringify(gen.body));
  const g = await waitJob(base, gen.body.id as number);
  assert.equal(g.status, "done", String(g.error));
});
