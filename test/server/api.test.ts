// The studio's JSON API: each endpoint's happy path on the shapes base
// (create a model, upload pictures, train a 2-step LoRA, generate with it),
// and its bad inputs — wrong types, missing fields, `..`, absolute paths,
// symlinks out of the workspace, oversized and non-image uploads, a missing
// or wrong token off-localhost — each a clear 4xx naming the field, with
// nothing written outside the workspace.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type Studio, startStudio } from "../../src/server/studio.js";
import { call, gentleEnv, studioDirs, subjectPictures, tinyLora, waitJob } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-api-");
let studio: Studio;
let base: string;
const pictures = subjectPictures(join(dirs.root, "pictures"), 3);
const MAX_UPLOAD = 64 * 1024;

before(async () => {
  studio = await startStudio({ workspace: dirs.workspace, port: 0, maxUpload: MAX_UPLOAD, env: gentleEnv() });
  base = studio.url;
});
after(async () => {
  await studio?.close();
  // every bad request above was refused before writing: the folder beside the workspace is untouched
  assert.deepEqual(readdirSync(dirs.outside), [], "something was written outside the workspace");
});

/** Expects a 4xx whose error names `field` (and says `why`, when given). */
async function refused(method: string, path: string, body: unknown, status: number, field?: string, why?: RegExp) {
  const r = await call(base, method, path, body);
  assert.equal(r.status, status, `${method} ${path}: ${JSON.stringify(r.body)}`);
  assert.equal(typeof r.body.error, "string");
  if (field !== undefined) assert.equal(r.body.field, field, r.body.error);
  if (why) assert.match(r.body.error!, why);
  return r;
}

test("health, the OpenAPI document of every route, the A1111 layout; files dropped by hand appear", async () => {
  assert.deepEqual((await call(base, "GET", "/api/health")).body.ok, true);
  const doc = (await call(base, "GET", "/api/openapi.json")).body as { openapi: string; paths: Record<string, object> };
  assert.equal(doc.openapi, "3.1.0");
  for (const p of [
    "/api/models",
    "/api/train",
    "/api/jobs/{id}/events",
    "/api/datasets/{name}/images/{file}",
    "/api/generate",
  ]) {
    assert.ok(doc.paths[p], `${p} is in the OpenAPI document`);
  }
  for (const d of [
    "models/Stable-diffusion",
    "models/Lora",
    "embeddings",
    "models/hypernetworks",
    "datasets",
    "runs",
    "outputs",
  ]) {
    assert.ok(existsSync(join(dirs.workspace, d)), d);
  }
  writeFileSync(join(dirs.workspace, "models/Lora/dropped.safetensors"), "not really");
  writeFileSync(join(dirs.workspace, "models/Stable-diffusion/dropped.ckpt"), "not really");
  const ws = (await call(base, "GET", "/api/workspace")).body as {
    lora: { path: string }[];
    checkpoints: { path: string }[];
  };
  assert.deepEqual(
    ws.lora.map((f) => f.path),
    ["models/Lora/dropped.safetensors"],
  );
  const sources = (await call(base, "GET", "/api/sources")).body as unknown as { source: string }[];
  assert.deepEqual(
    sources.map((s) => s.source),
    ["builtin:shapes-base", "models/Stable-diffusion/dropped.ckpt"],
  );
  const lib = (await call(base, "GET", "/api/library")).body as { lora: { path: string; problem?: string }[] };
  assert.match(lib.lora[0].problem ?? "", /./, "an unreadable LoRA is listed with its problem");
  assert.deepEqual((await call(base, "GET", "/api/lab")).body, []);
  const fields = (await call(base, "GET", "/api/config/fields")).body as unknown as { name: string }[];
  assert.ok(fields.some((f) => f.name === "concepts[].instance_prompt"));
});

test("requests the API does not know, bodies that are not JSON", async () => {
  await refused("GET", "/api/nothing", undefined, 404);
  await refused("DELETE", "/api/models", undefined, 405);
  const bad = await fetch(new URL("/api/datasets", base), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "{nope",
  });
  assert.equal(bad.status, 400);
  assert.equal(((await bad.json()) as { field: string }).field, "body");
  const plain = await fetch(new URL("/api/datasets", base), {
    method: "POST",
    headers: { "Content-Type": "text/plain" },
    body: "{}",
  });
  assert.equal(plain.status, 415);
  const huge = await fetch(new URL("/api/datasets", base), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "x".repeat(2 << 20) }),
  });
  assert.equal(huge.status, 413);
});

test("models: create from the shapes base with a scheduler; list, inspect; bad inputs", async () => {
  await refused(
    "POST",
    "/api/models",
    { name: 5, source: "builtin:shapes-base" },
    400,
    "body.name",
    /must be a string/,
  );
  await refused("POST", "/api/models", { name: "m" }, 400, "body.source", /is required/);
  await refused(
    "POST",
    "/api/models",
    { name: "m", source: "builtin:shapes-base", scheduler: "plms" },
    400,
    "body.scheduler",
    /one of/,
  );
  await refused("POST", "/api/models", { name: "../m", source: "builtin:shapes-base" }, 400, "body.name");
  await refused(
    "POST",
    "/api/models",
    { name: "m", source: "builtin:shapes-base", extra: 1 },
    400,
    "body.extra",
    /unknown field/,
  );
  await refused("POST", "/api/models", { name: "m", source: "../../outside" }, 400, "body.source", /'\.\.'/);
  await refused("POST", "/api/models", { name: "m", source: "/etc/passwd" }, 400, "body.source", /absolute/);
  symlinkSync(dirs.outside, join(dirs.workspace, "models/Stable-diffusion/escape"));
  await refused(
    "POST",
    "/api/models",
    { name: "m", source: "models/Stable-diffusion/escape/x.ckpt" },
    400,
    "body.source",
    /symbolic link/,
  );
  await refused(
    "POST",
    "/api/models",
    { name: "m", source: "models/Stable-diffusion/none.ckpt" },
    400,
    "body.source",
    /no such file/,
  );

  const job = await call(base, "POST", "/api/models", {
    name: "shapes",
    source: "builtin:shapes-base",
    scheduler: "euler_a",
  });
  assert.equal(job.status, 200, JSON.stringify(job.body));
  assert.equal(job.body.kind, "create-model");
  assert.equal(job.body.params, undefined, "the worker's parameters are not shown");
  const done = await waitJob(base, job.body.id as number);
  assert.equal(done.status, "done", String(done.error));
  const { models } = (await call(base, "GET", "/api/models")).body as { models: { name: string; scheduler: string }[] };
  assert.deepEqual(
    models.map((m) => [m.name, m.scheduler]),
    [["shapes", "euler_a"]],
  );
  const one = await call(base, "GET", "/api/models/shapes");
  assert.equal((one.body.architecture as { version: string }).version, "sd1");
  await refused("GET", "/api/models/nothing", undefined, 404);
  await refused("POST", "/api/models", { name: "shapes", source: "builtin:shapes-base" }, 409, "body.name");
});

test("datasets: uploads checked as images and size-limited; captions; bad names and paths", async () => {
  await refused("POST", "/api/datasets", { name: "../up" }, 400, "body.name");
  await refused("POST", "/api/datasets", {}, 400, "body.name", /required/);
  assert.equal((await call(base, "POST", "/api/datasets", { name: "star" })).status, 200);
  for (const p of pictures) {
    const r = await call(base, "PUT", `/api/datasets/star/images/${p.split("/").at(-1)}`, readFileSync(p));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.width, 64);
  }
  const upload = (name: string, bytes: Uint8Array | string) =>
    call(base, "PUT", `/api/datasets/star/images/${name}`, bytes);
  let r = await upload("fake.png", "this is not a picture");
  assert.equal(r.status, 415, JSON.stringify(r.body));
  r = await upload("big.png", new Uint8Array(MAX_UPLOAD + 1));
  assert.equal(r.status, 413, JSON.stringify(r.body));
  r = await upload("notes.txt", readFileSync(pictures[0]));
  assert.equal(r.status, 400);
  assert.equal(r.body.field, "path.file");
  r = await upload("..%2F..%2Foutside%2Fx.png", readFileSync(pictures[0]));
  assert.equal(r.status, 400);
  assert.equal(r.body.field, "path.file");
  r = await call(base, "PUT", "/api/datasets/none/images/a.png", readFileSync(pictures[0]));
  assert.equal(r.status, 404);
  // a dataset folder that is a symlink out of the workspace takes no upload
  symlinkSync(dirs.outside, join(dirs.workspace, "datasets/link"));
  r = await call(base, "PUT", "/api/datasets/link/images/a.png", readFileSync(pictures[0]));
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.match(r.body.error!, /symbolic link/);
  assert.deepEqual(
    readdirSync(join(dirs.workspace, "datasets/star")).filter((f) => f.startsWith(".")),
    [],
    "no upload left behind",
  );

  assert.equal(
    (await call(base, "PUT", "/api/datasets/star/captions/00000.png", { text: "a sks star on blue" })).status,
    200,
  );
  await refused("PUT", "/api/datasets/star/captions/00000.png", { text: 3 }, 400, "body.text");
  await refused("PUT", "/api/datasets/star/captions/none.png", { text: "x" }, 404);
  const d = (await call(base, "GET", "/api/datasets/star")).body as {
    images: { file: string; caption: string | null }[];
  };
  assert.equal(d.images.length, 3);
  assert.equal(d.images[0].caption, "a sks star on blue");
  const all = (await call(base, "GET", "/api/datasets")).body as unknown as { name: string; images: number }[];
  assert.deepEqual(all.find((x) => x.name === "star")?.images, 3);
});

test("train/check: the resolved config and its TOML, or the field at fault with the CLI's message", async () => {
  const config = tinyLora("shapes", "star", 2, 1);
  const ok = await call(base, "POST", "/api/train/check", { name: "r1", config });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.match(ok.body.toml as string, /max_steps = 2/);
  assert.equal((ok.body.config as { output_dir: string }).output_dir, join(studio.root, "runs/r1"));
  const check = (c: Record<string, unknown>, field: string, why?: RegExp) =>
    refused("POST", "/api/train/check", { name: "r1", config: { ...config, ...c } }, 400, field, why);
  await check({ learning_rate: "fast" }, "body.config.learning_rate", /learning_rate must be a number/);
  await check({ max_steps: 1.5 }, "body.config.max_steps");
  await check({ output_dir: "/tmp/x" }, "body.config.output_dir", /set by the studio/);
  await check(
    { concepts: [{ instance_data_dir: "/etc", instance_prompt: "x" }] },
    "body.config.concepts[0].instance_data_dir",
    /absolute/,
  );
  await check(
    { concepts: [{ instance_data_dir: "datasets/../../outside", instance_prompt: "x" }] },
    "body.config.concepts[0].instance_data_dir",
    /'\.\.'/,
  );
  await check(
    { concepts: [{ instance_data_dir: "datasets/link", instance_prompt: "x" }] },
    "body.config.concepts[0].instance_data_dir",
    /symbolic link/,
  );
  await check({ model: "nothing" }, "body.config.model");
  await refused("POST", "/api/train/check", { config }, 400, "body.name", /required/);
  await refused("POST", "/api/train/check", { name: "r1", config: [] }, 400, "body.config", /object/);
});

test("train a 2-step LoRA, stream its events, generate with it; jobs: cancel, pause and resume refused where they make no sense", async () => {
  const job = await call(base, "POST", "/api/train", { name: "r1", config: tinyLora("shapes", "star", 2, 1) });
  assert.equal(job.status, 200, JSON.stringify(job.body));
  const id = job.body.id as number;
  // a generation queued behind it is cancelled before it starts
  const queued = await call(base, "POST", "/api/generate", { model: "shapes", prompt: "a star", steps: 2 });
  assert.equal((await call(base, "POST", `/api/jobs/${queued.body.id}/cancel`)).body.status, "cancelled");
  await refused("POST", `/api/jobs/${queued.body.id}/pause`, undefined, 409);
  const done = await waitJob(base, id);
  assert.equal(done.status, "done", String(done.error));
  assert.equal((done.losses as unknown[]).length, 2);
  assert.equal((done.samples as { path: string }[]).length, 2);
  assert.deepEqual(done.result, { output_dir: "runs/r1", lora: "models/Lora/r1.safetensors" });
  await refused("POST", "/api/train", { name: "r1", config: tinyLora("shapes", "star", 2, 1) }, 409, "body.name");
  await refused("POST", `/api/jobs/${id}/resume`, undefined, 409);
  await refused("GET", "/api/jobs/abc", undefined, 400, "path.id");
  await refused("GET", "/api/jobs/999", undefined, 404);

  // the event stream replays what happened
  const res = await fetch(new URL(`/api/jobs/${id}/events`, base));
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  const reader = res.body!.getReader();
  let text = "";
  while (!text.includes("event: sample")) text += new TextDecoder().decode((await reader.read()).value);
  await reader.cancel();
  assert.match(text, /event: job\n/);
  assert.match(text, /event: step\ndata: \{"step":1,/);

  await refused("POST", "/api/generate", { model: "shapes", prompt: 3 }, 400, "body.prompt");
  await refused(
    "POST",
    "/api/generate",
    { model: "shapes", prompt: "x", width: 60 },
    400,
    "body.width",
    /multiple of 8/,
  );
  await refused("POST", "/api/generate", { model: "nothing", prompt: "x" }, 400, "body.model");
  const gen = await call(base, "POST", "/api/generate", {
    model: "shapes",
    prompt: "a sks star <lora:r1:1>",
    steps: 2,
    seed: 9,
    cfg: 5,
  });
  const g = await waitJob(base, gen.body.id as number);
  assert.equal(g.status, "done", String(g.error));
  const outputs = (await call(base, "GET", "/api/outputs")).body as unknown as { path: string; parameters: string }[];
  assert.equal(outputs.length, 1);
  assert.match(
    outputs[0].parameters,
    /^a sks star <lora:r1:1>\nSteps: 2, Sampler: Euler a, CFG scale: 5, Seed: 9, Size: 64x64/,
  );
  const png = await fetch(new URL(`/api/file?path=${encodeURIComponent(outputs[0].path)}`, base));
  assert.equal(png.headers.get("content-type"), "image/png");
  const lib = (await call(base, "GET", "/api/library")).body as {
    lora: { path: string; metadata?: Record<string, string> }[];
  };
  assert.equal(lib.lora.find((l) => l.path === "models/Lora/r1.safetensors")?.metadata?.ss_max_train_steps, "2");
  const jobs = (await call(base, "GET", "/api/jobs")).body as unknown as { id: number }[];
  assert.deepEqual(jobs.map((j) => j.id).slice(0, 3), [gen.body.id, queued.body.id, id]);

  // /api/file serves images of datasets/, runs/ and outputs/, nothing else
  const file = (p: string) => call(base, "GET", `/api/file?path=${encodeURIComponent(p)}`);
  for (const p of [
    "../outside/x.png",
    "/etc/passwd",
    ".atelier/studio.sqlite",
    "runs/r1/config.json",
    "models/Lora/r1.safetensors",
    "datasets/link/x.png",
  ]) {
    const r = await file(p);
    assert.equal(r.status, 400, `${p}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.field, "query.path");
  }
  assert.equal((await file("outputs/none.png")).status, 404);
});

test("a training job paused (it saves a state), resumed from that state, then cancelled while running", async () => {
  const job = await call(base, "POST", "/api/train", {
    name: "r2",
    // long enough that it is still running when the test cancels it, however fast the machine
    config: { ...tinyLora("shapes", "star", 200, 0), sample: {} },
  });
  const id = job.body.id as number;
  await waitJob(base, id, { until: (j) => (j.step as number) >= 1 });
  assert.equal((await call(base, "POST", `/api/jobs/${id}/pause`)).status, 200);
  const paused = await waitJob(base, id, { until: (j) => j.status !== "running" });
  assert.equal(paused.status, "paused", String(paused.error));
  assert.match(paused.resume_from as string, /runs\/r2\/state-step00000\d$/);
  const pausedAt = paused.step as number;
  await refused("POST", `/api/jobs/${id}/pause`, undefined, 409);
  assert.match((await call(base, "POST", `/api/jobs/${id}/resume`)).body.status as string, /^(queued|running)$/);
  const again = await waitJob(base, id, { until: (j) => (j.step as number) > pausedAt || j.status === "done" });
  const log = (again.log as { message: string }[]).map((l) => l.message).join("\n");
  assert.match(log, new RegExp(`resumed at step ${pausedAt}`));
  assert.equal(again.status, "running");
  assert.equal((await call(base, "POST", `/api/jobs/${id}/cancel`)).status, 200);
  const cancelled = await waitJob(base, id);
  assert.equal(cancelled.status, "cancelled");
  assert.ok((cancelled.step as number) < 200, "stopped before its last step");
  const steps = ((await call(base, "GET", `/api/jobs/${id}`)).body.losses as { step: number }[]).map((l) => l.step);
  assert.deepEqual(
    steps,
    [...new Set(steps)].sort((a, b) => a - b),
    "each step once, in order",
  );
});

test("off localhost every request needs the token", async () => {
  const open = await startStudio({
    workspace: join(dirs.root, "ws2"),
    host: "0.0.0.0",
    port: 0,
    token: "s3cret-token",
  });
  try {
    const port = new URL(open.url).port;
    const at = `http://127.0.0.1:${port}/`;
    assert.equal(open.token, "s3cret-token");
    const tries: Record<string, string>[] = [{}, { Authorization: "Bearer wrong" }, { Authorization: "s3cret-token" }];
    for (const headers of tries) {
      assert.equal((await call(at, "GET", "/api/health", undefined, headers)).status, 401);
    }
    assert.equal((await call(at, "GET", "/", undefined)).status, 401, "the pages too");
    assert.equal((await call(at, "POST", "/api/datasets", { name: "x" })).status, 401);
    assert.ok(!existsSync(join(dirs.root, "ws2/datasets/x")));
    assert.equal(
      (await call(at, "GET", "/api/health", undefined, { Authorization: "Bearer s3cret-token" })).status,
      200,
    );
    // the printed address (?token=) gives the page a SameSite=Strict cookie for its own requests
    const first = await fetch(new URL("/?token=s3cret-token", at));
    assert.equal(first.status, 200);
    assert.match(first.headers.get("set-cookie") ?? "", /^atelier_token=s3cret-token; HttpOnly; SameSite=Strict/);
    assert.equal(
      (await fetch(new URL("/app.js", at), { headers: { Cookie: "atelier_token=s3cret-token" } })).status,
      200,
    );
    assert.equal((await fetch(new URL("/app.js", at), { headers: { Cookie: "atelier_token=nope" } })).status, 401);
    assert.equal((await call(at, "GET", "/api/health?token=wrong")).status, 401);
    const generated = await startStudio({ workspace: join(dirs.root, "ws3"), host: "0.0.0.0", port: 0 });
    assert.match(generated.token ?? "", /^[\w-]{32}$/, "a token is generated when none is given");
    await generated.close();
  } finally {
    await open.close();
  }
});
