// create-model and the workspace: a tiny single-file checkpoint written by the
// test becomes a workspace model (fp32 diffusers weights + model.json) that
// loads with the same weights; names, duplicates and bad sources are refused;
// `model` in a training config resolves through the workspace.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { run } from "../../src/cli/main.js";
import { disposeAll } from "../../src/engine/index.js";
import { loadCheckpoint } from "../../src/formats/checkpoint.js";
import { disposeStableDiffusion, loadStableDiffusion } from "../../src/models/stable-diffusion.js";
import { loadTrainConfig } from "../../src/train/config.js";
import {
  checkModelName,
  createModel,
  defaultWorkspace,
  listModels,
  openModel,
  resolveModel,
  WorkspaceError,
} from "../../src/train/workspace.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-ws-");
const ckpt = join(dir, "tiny.safetensors");
const ws = join(dir, "workspace");
const tokenizer = sharedFixture("tokenizer");

before(() => writeTinyCheckpoint(ckpt, 11, "float16"));

/** Every tensor of two checkpoints, compared by diffusers key. */
function sameWeights(a: string, b: string): void {
  const x = loadCheckpoint(a, { dtype: "float32" });
  const y = loadCheckpoint(b, { dtype: "float32" });
  try {
    for (const c of ["unet", "vae", "textEncoder"] as const) {
      const [p, q] = [x.components[c]!, y.components[c]!];
      assert.deepEqual([...q.keys()].sort(), [...p.keys()].sort(), c);
      for (const [k, t] of p) {
        const u = q.get(k)!;
        assert.equal(u.dtype, "float32", k);
        assert.deepEqual(u.toArray(), t.toArray(), k);
      }
    }
  } finally {
    disposeAll([x.components, y.components]);
  }
}

/** Leftover temp or old folders (names starting with "."). */
const hidden = () => (existsSync(ws) ? readdirSync(ws).filter((n) => n.startsWith(".")) : []);

test("create-model: a workspace folder with model.json and fp32 diffusers weights that load", () => {
  const now = new Date("2024-05-01T12:00:00Z");
  const m = createModel("dog", { from: ckpt, workspace: ws, scheduler: "euler_a", tokenizer, now });
  assert.equal(m.dir, join(ws, "dog"));
  assert.equal(m.weights, join(ws, "dog", "weights"));
  const meta = JSON.parse(readFileSync(join(ws, "dog", "model.json"), "utf8"));
  assert.deepEqual(meta, m.meta);
  assert.equal(meta.name, "dog");
  assert.equal(meta.created, "2024-05-01T12:00:00.000Z");
  assert.equal(meta.scheduler, "euler_a");
  assert.deepEqual(meta.source, {
    path: ckpt,
    format: "safetensors",
    size: statSync(ckpt).size,
    sha256: createHash("sha256").update(readFileSync(ckpt)).digest("hex"),
    ema: false,
  });
  assert.equal(meta.architecture.version, "sd1");
  assert.equal(meta.architecture.prediction_type, "epsilon");
  assert.equal(meta.architecture.inpainting, false);
  assert.equal(meta.architecture.configs.textEncoder.hiddenSize, 32);
  assert.deepEqual(meta.weights, { folder: "weights", layout: "diffusers", dtype: "float32", tokenizer: true });
  const sched = JSON.parse(readFileSync(join(m.weights, "scheduler", "scheduler_config.json"), "utf8"));
  assert.equal(sched._class_name, "EulerAncestralDiscreteScheduler");
  assert.equal(sched.prediction_type, "epsilon");
  assert.equal(sched.beta_schedule, "scaled_linear");
  const index = JSON.parse(readFileSync(join(m.weights, "model_index.json"), "utf8"));
  assert.deepEqual(index.scheduler, ["diffusers", "EulerAncestralDiscreteScheduler"]);
  assert.ok(existsSync(join(m.weights, "tokenizer", "vocab.json")));
  assert.deepEqual(hidden(), []);

  // The working weights are the source's, in fp32, and the whole model loads (tokenizer included).
  sameWeights(ckpt, m.weights);
  const sd = loadStableDiffusion(m.weights);
  try {
    assert.equal(sd.kind, "sd1");
    assert.equal(sd.scheduler._class_name, "EulerAncestralDiscreteScheduler");
    assert.equal(sd.unet.parameters()[0].dtype, "float32");
  } finally {
    disposeStableDiffusion(sd);
  }
});

test("models are listed, opened and resolved by name; paths resolve as paths", () => {
  const { models, problems } = listModels(ws);
  assert.deepEqual(
    models.map((m) => m.name),
    ["dog"],
  );
  assert.deepEqual(problems, []);
  assert.equal(openModel("dog", ws).meta.scheduler, "euler_a");
  const r = resolveModel("dog", ws);
  assert.equal(r.path, join(ws, "dog", "weights"));
  assert.equal(r.model?.name, "dog");
  assert.deepEqual(resolveModel("tiny.safetensors", ws, dir), { path: ckpt });
  assert.throws(() => resolveModel("cat", ws), /"cat" is neither a model in the workspace .* \(its models: dog\)/);
  assert.throws(() => resolveModel("gone.safetensors", ws, dir), /gone\.safetensors: no such file or folder/);
  assert.throws(() => openModel("cat", ws), /no model "cat" in the workspace .* \(models: dog\)/);
  // A folder that is not a model is reported, not fatal.
  mkdirSync(join(ws, "junk"));
  writeFileSync(join(ws, "junk", "model.json"), "{}");
  const listed = listModels(ws);
  assert.deepEqual(
    listed.models.map((m) => m.name),
    ["dog"],
  );
  assert.match(listed.problems[0], /^junk: .*not an Atelier model\.json/);
});

test("a training config names a workspace model; sampling defaults to its scheduler", () => {
  const imgs = join(dir, "imgs");
  mkdirSync(imgs, { recursive: true });
  const c = loadTrainConfig(
    {
      model: "dog",
      workspace: ws,
      output_dir: "out",
      concepts: [{ instance_data_dir: "imgs", instance_prompt: "sks dog" }],
    },
    [],
    { baseDir: dir },
  );
  assert.equal(c.model, join(ws, "dog", "weights"));
  assert.equal(c.sample.sampler, "euler_a");
});

test("create-model refuses an existing name unless overwrite, bad names and unreadable sources", () => {
  assert.throws(
    () => createModel("dog", { from: ckpt, workspace: ws }),
    /model "dog" already exists in .*; pass --overwrite to replace it/,
  );
  for (const name of ["a/b", "../x", ".hidden", "", "a b", "x\\y", "-dash", "n".repeat(101)]) {
    assert.throws(() => checkModelName(name), WorkspaceError, JSON.stringify(name));
    assert.throws(() => createModel(name, { from: ckpt, workspace: ws }), /invalid model name/, JSON.stringify(name));
  }
  assert.throws(
    () => createModel("missing", { from: join(dir, "missing.safetensors"), workspace: ws }),
    /missing\.safetensors: no such file or folder/,
  );
  const junk = join(dir, "junk.safetensors");
  writeFileSync(junk, Buffer.from("this is not a safetensors file at all, just some text"));
  assert.throws(() => createModel("junk2", { from: junk, workspace: ws }), /junk\.safetensors/);
  assert.throws(
    () => createModel("tok", { from: ckpt, workspace: ws, tokenizer: dir }),
    /--tokenizer .*: no vocab\.json \+ merges\.txt/,
  );
  assert.ok(!existsSync(join(ws, "missing")) && !existsSync(join(ws, "junk2")) && !existsSync(join(ws, "tok")));
  assert.deepEqual(hidden(), []);

  // Overwrite replaces the model (another scheduler) and leaves nothing behind.
  const m = createModel("dog", { from: ckpt, workspace: ws, scheduler: "dpmpp_2m_karras", overwrite: true });
  assert.equal(m.meta.scheduler, "dpmpp_2m_karras");
  const sched = JSON.parse(readFileSync(join(m.weights, "scheduler", "scheduler_config.json"), "utf8"));
  assert.equal(sched._class_name, "DPMSolverMultistepScheduler");
  assert.equal(sched.use_karras_sigmas, true);
  assert.deepEqual(hidden(), []);
  // No --tokenizer: one is copied only where one is found ($ATELIER_TOKENIZER, the hub cache), and said so.
  const hasTokenizer = existsSync(join(m.weights, "tokenizer", "vocab.json"));
  assert.equal(m.meta.weights.tokenizer, hasTokenizer);
  if (!hasTokenizer) assert.ok(m.meta.architecture.notes.some((n) => /no tokenizer copied/.test(n)));
});

test("create-model from a diffusers folder keeps its schedule; the folder's digest is stable", () => {
  const m = createModel("dog2", { from: join(ws, "dog", "weights"), workspace: ws, scheduler: "ddim" });
  assert.equal(m.meta.source.format, "diffusers");
  assert.match(m.meta.source.sha256, /^[0-9a-f]{64}$/);
  assert.equal(m.meta.weights.tokenizer, openModel("dog", ws).meta.weights.tokenizer);
  const again = createModel("dog3", { from: join(ws, "dog", "weights"), workspace: ws });
  assert.equal(again.meta.source.sha256, m.meta.source.sha256);
  assert.equal(again.meta.source.size, m.meta.source.size);
  assert.equal(again.meta.scheduler, "ddim"); // the default
  const sched = JSON.parse(readFileSync(join(m.weights, "scheduler", "scheduler_config.json"), "utf8"));
  assert.equal(sched._class_name, "DDIMScheduler");
  assert.equal(sched.use_karras_sigmas, undefined); // the source's (dpmpp_2m_karras) is not kept
  assert.equal(sched.steps_offset, 1);
  sameWeights(ckpt, m.weights);
});

/** Runs the CLI in-process, capturing what it prints. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  console.error = (...a: unknown[]) => err.push(a.join(" "));
  try {
    const code = await run(argv);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    [console.log, console.error] = [log, error];
  }
}

test("atelier create-model and atelier models; the workspace from --workspace or ATELIER_WORKSPACE", async () => {
  const other = join(dir, "other-ws");
  const made = await cli(
    "create-model",
    "cli",
    "--from",
    ckpt,
    "--workspace",
    other,
    "--scheduler",
    "ddpm",
    "--tokenizer",
    tokenizer,
  );
  assert.equal(made.code, 0, made.err);
  assert.match(made.out, /created cli in .*other-ws\n {2}sd1, epsilon, scheduler ddpm/);
  const saved = process.env.ATELIER_WORKSPACE;
  process.env.ATELIER_WORKSPACE = other;
  try {
    assert.equal(defaultWorkspace(), other);
    const listed = await cli("models");
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /^name\s+arch\s+scheduler\s+created\s+source\ncli\s+sd1 epsilon\s+ddpm\s+\d{4}-\d\d-\d\d/);
    const json = JSON.parse((await cli("models", "--json")).out);
    assert.equal(json[0].name, "cli");
    assert.equal(json[0].weights, join(other, "cli", "weights"));
    const dup = await cli("create-model", "cli", "--from", ckpt);
    assert.equal(dup.code, 1);
    assert.match(dup.err, /already exists.*--overwrite/);
  } finally {
    if (saved === undefined) delete process.env.ATELIER_WORKSPACE;
    else process.env.ATELIER_WORKSPACE = saved;
  }
  const cases: [string[], RegExp, number][] = [
    [["create-model", "a/b", "--from", ckpt], /invalid model name "a\/b": it contains a path separator/, 2],
    [["create-model", "x"], /--from is required/, 2],
    [["create-model", "x", "--from", ckpt, "--scheduler", "plms"], /--scheduler must be one of ddpm, ddim/, 2],
    [["create-model", "x", "--from", join(dir, "nope.ckpt"), "--workspace", other], /nope\.ckpt: no such file/, 1],
    [["models", "--workspace", other, "extra"], /expected only flags/, 2],
  ];
  for (const [argv, message, code] of cases) {
    const r = await cli(...argv);
    assert.equal(r.code, code, argv.join(" "));
    assert.match(r.err, message, argv.join(" "));
  }
  const empty = await cli("models", "--workspace", join(dir, "empty"));
  assert.match(empty.out, /no models in .*create-model NAME --from CHECKPOINT/);
});
