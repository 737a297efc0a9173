// The studio's class-image, evaluation and batch-generation jobs (issue 11,
// item 3): each a queue job in a worker process whose output lands in the
// workspace — class pictures with captions in a new datasets/NAME, an eval
// report in outputs/eval/NAME that the Lab lists and serves, one txt2img job
// per prompt with seeds SEED+i — and bad inputs (wrong types, missing fields,
// `..`, absolute paths, unknown models or LoRAs, a taken name) are a clear
// 4xx naming the field, with nothing queued or written.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { Generator, noGrad, normal_ } from "../../src/engine/index.js";
import { readPngText } from "../../src/formats/png.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { type Studio, startStudio } from "../../src/server/studio.js";
import { shapesBasePath } from "../../src/shapes/base-path.js";
import { call, createShapesModel, gentleEnv, studioDirs, waitJob } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-jobs-");
let studio: Studio;
let base: string;
before(async () => {
  studio = await startStudio({ workspace: dirs.workspace, port: 0, env: gentleEnv() });
  base = studio.url;
  await createShapesModel(base, "ddim");
});
after(async () => {
  await studio?.close();
  assert.deepEqual(readdirSync(dirs.outside), [], "something was written outside the workspace");
});

async function refused(path: string, body: unknown, status: number, field: string, why?: RegExp) {
  const r = await call(base, "POST", path, body);
  assert.equal(r.status, status, `${path} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.field, field, r.body.error);
  if (why) assert.match(r.body.error!, why);
}
const jobCount = async () => ((await call(base, "GET", "/api/jobs")).body as unknown as unknown[]).length;

test("class images: a job that fills a new datasets/NAME with captioned pictures; bad inputs refused", async () => {
  const P = "/api/class-images";
  const ok = { name: "stars", model: "shapes", prompt: "a star", count: 2, steps: 2, seed: 5 };
  mkdirSync(join(dirs.workspace, "datasets", "taken"), { recursive: true });
  const jobs = await jobCount();
  await refused(P, { ...ok, name: undefined }, 400, "body.name", /required/);
  await refused(P, { ...ok, name: "../stars" }, 400, "body.name");
  await refused(P, { ...ok, name: join(dirs.outside, "x") }, 400, "body.name");
  await refused(P, { ...ok, model: 3 }, 400, "body.model", /string/);
  await refused(P, { ...ok, model: "nope" }, 400, "body.model");
  await refused(P, { ...ok, model: "../shapes" }, 400, "body.model");
  await refused(P, { ...ok, prompt: "" }, 400, "body.prompt", /empty/);
  await refused(P, { ...ok, count: "2" }, 400, "body.count");
  await refused(P, { ...ok, count: 0 }, 400, "body.count");
  await refused(P, { ...ok, count: 1.5 }, 400, "body.count", /whole/);
  await refused(P, { ...ok, width: 60 }, 400, "body.width", /multiple of 8/);
  await refused(P, { ...ok, colour: "red" }, 400, "body.colour", /unknown field/);
  await refused(P, { ...ok, name: "taken" }, 409, "body.name", /exists/);
  assert.equal(await jobCount(), jobs, "a refused request queued a job");
  assert.deepEqual(readdirSync(join(dirs.workspace, "datasets")), ["taken"]);

  const job = await call(base, "POST", P, ok);
  assert.equal(job.status, 200, JSON.stringify(job.body));
  assert.equal(job.body.kind, "class-images");
  const done = await waitJob(base, job.body.id as number);
  assert.equal(done.status, "done", String(done.error));
  assert.equal(done.step, 2);
  assert.equal(done.total, 2);
  const result = done.result as { output: string; images: string[]; seed: number };
  assert.equal(result.output, "datasets/stars");
  assert.equal(result.images.length, 2);
  const files = readdirSync(join(dirs.workspace, "datasets", "stars")).sort();
  assert.equal(files.filter((f) => f.endsWith(".png")).length, 2, files.join(" "));
  assert.equal(files.filter((f) => f.endsWith(".txt")).length, 2, files.join(" "));
  for (const p of result.images) {
    assert.ok(p.startsWith("datasets/stars/"), p);
    assert.match(readPngText(readFileSync(join(dirs.workspace, p))).parameters ?? "", /^a star\n.*Steps: 2/s);
    assert.equal(readFileSync(join(dirs.workspace, p.replace(/\.png$/, ".txt")), "utf8"), "a star");
  }
  const ds = (await call(base, "GET", "/api/datasets")).body as unknown as { name: string; images: number }[];
  assert.deepEqual(
    ds.find((d) => d.name === "stars"),
    { name: "stars", images: 2 },
  );
  await refused(P, ok, 409, "body.name");
});

test("eval: a job whose report.html lands in outputs/eval/NAME, listed and served by the Lab", async () => {
  const P = "/api/eval";
  const ok = { name: "e1", model: "shapes", samples: 1, steps: 2 };
  mkdirSync(join(dirs.workspace, "outputs", "eval", "taken"), { recursive: true });
  const jobs = await jobCount();
  await refused(P, { ...ok, model: undefined }, 400, "body.model", /required/);
  await refused(P, { ...ok, name: "a/b" }, 400, "body.name");
  await refused(P, { ...ok, name: "/abs" }, 400, "body.name");
  await refused(P, { ...ok, lora: "nope" }, 400, "body.lora", /no LoRA nope/);
  await refused(P, { ...ok, lora: "../../models/atelier/shapes" }, 400, "body.lora");
  await refused(P, { ...ok, lora_scale: 0.5 }, 400, "body.lora_scale", /body.lora/);
  await refused(P, { ...ok, base: "nope" }, 400, "body.base");
  await refused(P, { ...ok, subject: "sks:blob" }, 400, "body.subject");
  await refused(P, { ...ok, samples: 0 }, 400, "body.samples");
  await refused(P, { ...ok, steps: "2" }, 400, "body.steps");
  await refused(P, { ...ok, name: "taken" }, 409, "body.name", /exists/);
  assert.equal(await jobCount(), jobs, "a refused request queued a job");
  assert.deepEqual(readdirSync(join(dirs.workspace, "outputs", "eval")), ["taken"]);

  const job = await call(base, "POST", P, { ...ok, subject: "sks:star:yellow:red", base: "shapes" });
  assert.equal(job.status, 200, JSON.stringify(job.body));
  assert.equal(job.body.kind, "eval");
  const done = await waitJob(base, job.body.id as number, { timeoutMs: 300_000 });
  assert.equal(done.status, "done", String(done.error));
  assert.ok((done.total as number) > 0 && done.step === done.total, `${done.step}/${done.total}`);
  const result = done.result as { output: string; evaluated: Record<string, number>; base: Record<string, number> };
  assert.equal(result.output, "outputs/eval/e1/report.html");
  // the model is its own base here: both columns score the same samples
  assert.deepEqual(result.evaluated, result.base);
  const report = JSON.parse(readFileSync(join(dirs.workspace, "outputs/eval/e1/eval.json"), "utf8"));
  assert.equal(report.settings.samples, 1);
  assert.equal(report.subjects[0].token, "sks");
  const lab = (await call(base, "GET", "/api/lab")).body as unknown as { path: string }[];
  assert.ok(
    lab.some((f) => f.path === result.output),
    JSON.stringify(lab),
  );
  const html = await fetch(new URL(`/api/lab/report?path=${encodeURIComponent(result.output)}`, base));
  assert.equal(html.status, 200);
  assert.match(await html.text(), /identity/);
  await refused(P, ok, 409, "body.name");
});

test("eval with a LoRA of models/Lora against the built-in shapes base", async () => {
  {
    // a LoRA of the shapes base with non-zero up factors
    const m = loadStableDiffusion(shapesBasePath());
    const net = injectLora(m, { rank: 2, alpha: 2, generator: new Generator(3) });
    const g = new Generator(4);
    noGrad(() => {
      for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.2, g);
    });
    g.dispose();
    mkdirSync(join(dirs.workspace, "models", "Lora"), { recursive: true });
    saveLora(join(dirs.workspace, "models", "Lora", "l1.safetensors"), net);
    net.remove();
    disposeStableDiffusion(m);
  }
  const job = await call(base, "POST", "/api/eval", {
    name: "e2",
    model: "shapes",
    lora: "l1",
    lora_scale: 0.5,
    samples: 1,
    steps: 1,
  });
  assert.equal(job.status, 200, JSON.stringify(job.body));
  const done = await waitJob(base, job.body.id as number, { timeoutMs: 300_000 });
  assert.equal(done.status, "done", String(done.error));
  const report = JSON.parse(readFileSync(join(dirs.workspace, "outputs/eval/e2/eval.json"), "utf8"));
  assert.equal(report.settings.base, "shapes-base");
  assert.equal(report.settings.same_model, false);
  assert.deepEqual(report.settings.lora, {
    path: join(dirs.workspace, "models", "Lora", "l1.safetensors"),
    scale: 0.5,
  });
});

test("batch generation: one txt2img job per prompt, seeds SEED+i; a bad prompt queues none", async () => {
  const P = "/api/generate/batch";
  const ok = { model: "shapes", prompts: ["a star", "a circle"], steps: 2, seed: 40 };
  const jobs = await jobCount();
  await refused(P, { ...ok, prompts: "a star" }, 400, "body.prompts", /array/);
  await refused(P, { ...ok, prompts: [] }, 400, "body.prompts", /at least one/);
  await refused(P, { ...ok, prompts: ["a star", 3] }, 400, "body.prompts[1]", /string/);
  await refused(P, { ...ok, model: "nope" }, 400, "body.model");
  await refused(P, { ...ok, prompts: undefined }, 400, "body.prompts", /required/);
  await refused(P, { ...ok, height: 12 }, 400, "body.height", /multiple of 8/);
  await refused(P, { ...ok, sampler: "magic" }, 400, "body.sampler");
  assert.equal(await jobCount(), jobs, "a refused request queued a job");
  assert.ok(!existsSync(join(dirs.workspace, "outputs", "txt2img")));

  const r = await call(base, "POST", P, ok);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const queued = r.body.jobs as { id: number; kind: string }[];
  assert.deepEqual(
    queued.map((j) => j.kind),
    ["generate", "generate"],
  );
  for (const [i, j] of queued.entries()) {
    const done = await waitJob(base, j.id);
    assert.equal(done.status, "done", String(done.error));
    const { images, seed } = done.result as { images: string[]; seed: number };
    assert.equal(seed, 40 + i);
    const text = readPngText(readFileSync(join(dirs.workspace, images[0]))).parameters ?? "";
    assert.match(text, new RegExp(`^${ok.prompts[i]}\\n.*Seed: ${40 + i}`, "s"));
  }
});
