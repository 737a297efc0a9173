// The studio's merge jobs: LoRA files of models/Lora baked into a checkpoint,
// and A1111's checkpoint merger, each a queue job in a worker process whose
// output lands in models/Stable-diffusion (listed as a model source); the
// merged file holds what the library's merge writes; and bad inputs — wrong
// types, missing fields, `..`, absolute paths, unknown LoRAs, a taken name —
// are a clear 4xx naming the field, with nothing queued or written.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { disposeAll, Generator, noGrad, normal_ } from "../../src/engine/index.js";
import { openSafetensors } from "../../src/formats/safetensors.js";
import { loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { type Studio, startStudio } from "../../src/server/studio.js";
import { tinyTokenizerDir, writeTinyCheckpoint } from "../tiny-model.js";
import { call, gentleEnv, studioDirs, waitJob } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-merge-");
const sd = join(dirs.workspace, "models", "Stable-diffusion");
const loraDir = join(dirs.workspace, "models", "Lora");
mkdirSync(sd, { recursive: true });
mkdirSync(loraDir, { recursive: true });
writeTinyCheckpoint(join(sd, "a.safetensors"), 7, "float32");
writeTinyCheckpoint(join(sd, "b.safetensors"), 8, "float32");
writeTinyCheckpoint(join(dirs.outside, "c.safetensors"), 9, "float32");
symlinkSync(join(dirs.outside, "c.safetensors"), join(sd, "link.safetensors"));
{
  // a LoRA of the tiny model with non-zero up factors, so that merging changes weights
  const m = loadStableDiffusion(join(sd, "a.safetensors"), { tokenizerDir: tinyTokenizerDir(), dtype: "float32" });
  const net = injectLora(m, { rank: 2, alpha: 2, generator: new Generator(3) });
  const g = new Generator(4);
  noGrad(() => {
    for (const [k, t] of net.stateDict()) if (k.endsWith("lora_up.weight")) normal_(t, 0, 0.2, g);
  });
  g.dispose();
  saveLora(join(loraDir, "l1.safetensors"), net);
  net.remove();
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
}

let studio: Studio;
let base: string;
before(async () => {
  studio = await startStudio({ workspace: dirs.workspace, port: 0, env: gentleEnv() });
  base = studio.url;
});
after(async () => {
  await studio?.close();
  assert.deepEqual(readdirSync(dirs.outside), ["c.safetensors"], "something was written outside the workspace");
});

async function refused(path: string, body: unknown, status: number, field: string, why?: RegExp) {
  const r = await call(base, "POST", path, body);
  assert.equal(r.status, status, `${path} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.field, field, r.body.error);
  if (why) assert.match(r.body.error!, why);
}

const files = () => readdirSync(sd).sort();

test("merge LoRA: a job whose checkpoint lands in models/Stable-diffusion; bad inputs refused", async () => {
  const P = "/api/merge/lora";
  const ok = { name: "m1", checkpoint: "models/Stable-diffusion/a.safetensors", loras: [{ name: "l1", weight: 0.7 }] };
  await refused(P, { ...ok, name: undefined }, 400, "body.name");
  await refused(P, { ...ok, name: "../x" }, 400, "body.name");
  await refused(P, { ...ok, checkpoint: 3 }, 400, "body.checkpoint");
  await refused(P, { ...ok, checkpoint: "../outside/c.safetensors" }, 400, "body.checkpoint", /\.\./);
  await refused(P, { ...ok, checkpoint: join(dirs.outside, "c.safetensors") }, 400, "body.checkpoint", /absolute/);
  await refused(P, { ...ok, checkpoint: "models/Stable-diffusion/link.safetensors" }, 400, "body.checkpoint");
  await refused(
    P,
    { ...ok, checkpoint: "models/Stable-diffusion/none.safetensors" },
    400,
    "body.checkpoint",
    /no file/,
  );
  await refused(P, { ...ok, loras: "l1" }, 400, "body.loras");
  await refused(P, { ...ok, loras: [] }, 400, "body.loras");
  await refused(P, { ...ok, loras: [{ name: "nope" }] }, 400, "body.loras[0].name", /no LoRA nope/);
  await refused(P, { ...ok, loras: [{ name: "../l1" }] }, 400, "body.loras[0].name");
  await refused(P, { ...ok, loras: [{ name: "l1", weight: "1" }] }, 400, "body.loras[0].weight");
  await refused(P, { ...ok, name: "a" }, 409, "body.name", /exists/);
  assert.deepEqual((await call(base, "GET", "/api/jobs")).body, [], "a refused request queued a job");
  assert.deepEqual(files(), ["a.safetensors", "b.safetensors", "link.safetensors"]);

  const job = await call(base, "POST", P, ok);
  assert.equal(job.status, 200, JSON.stringify(job.body));
  assert.equal(job.body.kind, "merge-lora");
  const done = await waitJob(base, job.body.id as number);
  assert.equal(done.status, "done", String(done.error));
  const result = done.result as { output: string; weights_changed: number };
  assert.equal(result.output, "models/Stable-diffusion/m1.safetensors");
  assert.ok(result.weights_changed > 0, JSON.stringify(result));
  assert.deepEqual(done.losses, []);
  const f = openSafetensors(join(dirs.workspace, result.output));
  assert.match(f.metadata.atelier_merged_loras ?? "", /"file":"l1.safetensors","weight":0.7/);
  f.close();
  const sources = (await call(base, "GET", "/api/sources")).body as unknown as { source: string }[];
  assert.ok(
    sources.some((s) => s.source === result.output),
    JSON.stringify(sources),
  );
  await refused(P, ok, 409, "body.name");
});

test("merge checkpoints: weighted sum and add difference as jobs; a missing B or C named; cancel", async () => {
  const P = "/api/merge/checkpoints";
  const A = "models/Stable-diffusion/a.safetensors";
  const B = "models/Stable-diffusion/b.safetensors";
  await refused(P, { name: "w", a: A, mode: "weighted_sum" }, 400, "body.b", /needs model B/);
  await refused(P, { name: "w", a: A, b: B, mode: "add_difference" }, 400, "body.c", /needs model C/);
  await refused(P, { name: "w", a: A, b: B, mode: "average" }, 400, "body.mode");
  await refused(P, { name: "w", a: A, b: B, mode: "weighted_sum", multiplier: 2 }, 400, "body.multiplier");
  await refused(P, { name: "w", b: B, mode: "weighted_sum" }, 400, "body.a");
  await refused(P, { name: "w", a: "/etc/passwd", b: B, mode: "weighted_sum" }, 400, "body.a", /absolute/);
  await refused(P, { name: "w", a: A, b: "../outside/c.safetensors", mode: "weighted_sum" }, 400, "body.b");
  await refused(P, { name: "w", a: "datasets", b: B, mode: "weighted_sum" }, 400, "body.a");

  const w = await call(base, "POST", P, { name: "w", a: A, b: B, mode: "weighted_sum", multiplier: 0.25 });
  assert.equal(w.status, 200, JSON.stringify(w.body));
  // a job queued behind it is cancelled before it starts, and writes nothing
  const d = await call(base, "POST", P, { name: "d", a: A, b: B, c: A, mode: "add_difference" });
  assert.equal((await call(base, "POST", `/api/jobs/${d.body.id}/cancel`)).body.status, "cancelled");
  const done = await waitJob(base, w.body.id as number);
  assert.equal(done.status, "done", String(done.error));
  assert.equal((done.result as { output: string }).output, "models/Stable-diffusion/w.safetensors");
  assert.ok((done.result as { merged: number }).merged > 0);
  // A + (B − A)·1 is B
  const d2 = await call(base, "POST", P, { name: "d2", a: A, b: B, c: A, mode: "add_difference", multiplier: 1 });
  assert.equal((await waitJob(base, d2.body.id as number)).status, "done");
  assert.ok(!files().includes("d.safetensors"));
  const got = openSafetensors(join(sd, "d2.safetensors"));
  const want = openSafetensors(join(sd, "b.safetensors"));
  const key = got.keys().find((k) => k.startsWith("model.diffusion_model."))!;
  const [tx, ty] = [got.get(key), want.get(key)];
  const [x, y] = [tx.toArray(), ty.toArray()];
  disposeAll([tx, ty]);
  got.close();
  want.close();
  assert.equal(x.length, y.length);
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i] - y[i]) < 1e-5, `${key}[${i}]: ${x[i]} vs ${y[i]}`);
});
