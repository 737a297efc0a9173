// The training config's cross-field checks, the files it must find (a model,
// instance folders, a tokenizer, workspace models), the resolved config
// written as JSON loading back to the same config, and check-config.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { run } from "../../src/cli/main.js";
import { configFields, describeConfig, loadTrainConfig, writeResolvedConfig } from "../../src/train/config.js";
import { dir, fails, load, minimal, opts, sub } from "./config-world.js";

test("cross-field checks", () => {
  const concept = (more: Record<string, unknown>) => ({
    concepts: [{ instance_data_dir: "dog", instance_prompt: "x", ...more }],
  });
  const cases: [Record<string, unknown>, RegExp, string][] = [
    [
      minimal(concept({ class_data_dir: "class" })),
      /concepts\[0\].class_data_dir is set without concepts\[0\].class_prompt/,
      "concepts[0].class_prompt",
    ],
    [
      minimal(concept({ class_prompt: "dog" })),
      /concepts\[0\].class_prompt is set without concepts\[0\].class_data_dir/,
      "concepts[0].class_data_dir",
    ],
    [
      minimal(concept({ num_class_images: 200 })),
      /num_class_images is 200 but concepts\[0\] has no class_data_dir/,
      "concepts[0].num_class_images",
    ],
    [
      minimal({ prior_loss_weight: 0.5 }),
      /prior_loss_weight is 0.5 but no concept has class_data_dir/,
      "prior_loss_weight",
    ],
    [minimal({ save: { formats: ["lora"] } }), /save.formats has "lora" but no LoRA is trained/, "save.formats"],
    [minimal({ method: "lora", use_lora: false }), /use_lora is false but method is lora/, "use_lora"],
    [minimal({ lora: { rank: 8 } }), /lora.rank is set to 8 but has no effect: no LoRA is trained/, "lora.rank"],
    [
      minimal({ method: "lora", train_text_encoder: false, lora: { text_encoder: true } }),
      /lora.text_encoder is true but train_text_encoder is false/,
      "lora.text_encoder",
    ],
    [minimal({ method: "lora", lora: { unet: false, text_encoder: false } }), /nothing to train/, "lora.unet"],
    [
      minimal({ method: "lora", lora: { conv_rank: 4, conv_alpha: 0 } }),
      /lora.conv_alpha must be > 0/,
      "lora.conv_alpha",
    ],
    [
      minimal({ train_text_encoder: false, text_encoder_lr: 1e-5 }),
      /text_encoder_lr is set to 0.00001 but has no effect/,
      "text_encoder_lr",
    ],
    [
      minimal({ sample: { every_n_steps: 10 } }),
      /sample.every_n_steps is 10 but sample.prompts is empty/,
      "sample.prompts",
    ],
    [minimal({ lr_scheduler: "piecewise_constant" }), /needs lr_step_rules/, "lr_step_rules"],
    [
      minimal({ lr_scheduler: "piecewise_constant", lr_step_rules: "1:x" }),
      /lr_step_rules: .*bad rule/,
      "lr_step_rules",
    ],
    [
      minimal({ lr_step_rules: "1:10,0.1" }),
      /lr_step_rules is set .* no effect: lr_scheduler is constant/,
      "lr_step_rules",
    ],
    [minimal({ lr_scheduler_power: 2 }), /lr_scheduler_power .* no effect/, "lr_scheduler_power"],
    [
      minimal({ bucketing: { enabled: true, min: 1024, max: 512 } }),
      /bucketing.min \(1024\) is larger than bucketing.max/,
      "bucketing.min",
    ],
    [
      minimal({ bucketing: { enabled: true, min: 264 } }),
      /bucketing.min \(264\) is not a multiple of bucketing.step/,
      "bucketing.min",
    ],
    [
      minimal({ resolution: 128, bucketing: { enabled: true } }),
      /resolution 128 is outside bucketing.min…max/,
      "resolution",
    ],
  ];
  for (const [cfg, message, field] of cases) fails(() => load(cfg), message, field);
  // Allowed: prior_loss_weight 1 (kohya configs carry it) without classes; a LoRA run saving the merged model.
  assert.equal(load(minimal({ prior_loss_weight: 1 })).prior_loss_weight, 1);
  const merged = load(minimal({ method: "lora", save: { formats: ["lora", "ldm_safetensors", "diffusers"] } }));
  assert.deepEqual(merged.save.formats, ["lora", "ldm_safetensors", "diffusers"]);
  // LoRA: lora.text_encoder and train_text_encoder are one switch.
  assert.equal(load(minimal({ method: "lora", lora: { text_encoder: false } })).train_text_encoder, false);
  assert.equal(load(minimal({ method: "lora", train_text_encoder: false })).lora.text_encoder, false);
  const cos = load(minimal({ lr_scheduler: "cosine_with_restarts", lr_scheduler_num_cycles: 3, lr_warmup_steps: 10 }));
  assert.equal(cos.lr_scheduler_num_cycles, 3);
});

test("files: the model, instance folders and tokenizer must exist (unless checkFiles is false)", () => {
  fails(
    () => load(minimal({ model: "missing.safetensors" })),
    /model: .*missing\.safetensors: no such file or folder/,
    "model",
  );
  fails(
    () => load(minimal({ model: "sd15" })),
    /"sd15" is neither a model in the workspace .* \(it has no models\)/,
    "model",
  );
  fails(
    () => load(minimal({ concepts: [{ instance_data_dir: "nope", instance_prompt: "x" }] })),
    /concepts\[0\].instance_data_dir: .*nope: no such folder/,
    "concepts[0].instance_data_dir",
  );
  fails(
    () => load(minimal({ concepts: [{ instance_data_dir: "base.safetensors", instance_prompt: "x" }] })),
    /not a folder/,
  );
  fails(() => load(minimal({ tokenizer: "tok" })), /tokenizer: .*tok: no such folder/, "tokenizer");
  fails(() => load(minimal({ output_dir: "base.safetensors" })), /output_dir: .* is a file/, "output_dir");
  const c = loadTrainConfig(
    minimal({ model: "sd15", concepts: [{ instance_data_dir: "nope", instance_prompt: "x" }] }),
    [],
    {
      ...opts,
      baseDir: sub,
      checkFiles: false,
    },
  );
  assert.equal(c.model, join(sub, "sd15"));
});

test("a workspace model name resolves to its weights, and brings its scheduler to sampling", () => {
  const model = join(dir, "ws", "mine");
  mkdirSync(join(model, "weights"), { recursive: true });
  writeFileSync(join(model, "weights", "model_index.json"), "{}");
  writeFileSync(
    join(model, "model.json"),
    JSON.stringify({ atelier_model: 1, name: "mine", scheduler: "dpmpp_2m", weights: { folder: "weights" } }),
  );
  const c = load(minimal({ model: "mine" }));
  assert.equal(c.model, join(model, "weights"));
  assert.equal(c.sample.sampler, "dpmpp_2m");
  fails(() => load(minimal({ model: "mien" })), /"mien" is neither a model in the workspace .* \(its models: mine\)/);
});

test("the resolved config written as JSON loads back to the same config", () => {
  for (const src of [minimal(), join(sub, "cfg.toml"), minimal({ use_lora: true, train_text_encoder: false })]) {
    const c = load(src);
    const path = writeResolvedConfig(c, join(dir, "resolved.json"));
    assert.equal(readFileSync(path, "utf8"), `${JSON.stringify(c, null, 2)}\n`);
    assert.deepEqual(loadTrainConfig(path, [], opts), c);
  }
  const c = load(minimal({ output_dir: "run1" }));
  const written = writeResolvedConfig(c);
  assert.equal(written, join(sub, "run1", "config.json"));
});

test("describeConfig lists every field with its default; check-config prints the resolved config", async () => {
  const text = describeConfig();
  for (const f of configFields()) assert.ok(text.includes(f.name), f.name);
  assert.match(
    text,
    /learning_rate\s+learning rate .*\n\s+number > 0, <= 1; default the method's: 2e-6 \(dreambooth\), 1e-4 \(lora\)/,
  );
  assert.match(text, /concepts\[\]\.instance_data_dir/);

  const out: string[] = [];
  const err: string[] = [];
  const [write, error, log] = [process.stdout.write, console.error, console.log];
  process.stdout.write = ((s: string) => out.push(s) > 0) as typeof process.stdout.write;
  console.error = (...a: unknown[]) => err.push(a.join(" "));
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  const saved = process.env.ATELIER_WORKSPACE;
  process.env.ATELIER_WORKSPACE = join(dir, "ws");
  try {
    assert.equal(await run(["check-config", join(sub, "cfg.toml"), "--lora.rank", "8"]), 0, err.join("\n"));
    const printed = JSON.parse(out.join(""));
    assert.equal(printed.lora.rank, 8);
    assert.equal(printed.seed, 42);
    out.length = 0;
    assert.equal(await run(["check-config", join(sub, "cfg.toml"), "--lora.rnak", "8"]), 2);
    assert.match(err.join("\n"), /did you mean "lora.rank"/);
    assert.equal(await run(["check-config", "--help"]), 0);
    assert.match(out.join("\n"), /Training config fields/);
  } finally {
    [process.stdout.write, console.error, console.log] = [write, error, log];
    if (saved === undefined) delete process.env.ATELIER_WORKSPACE;
    else process.env.ATELIER_WORKSPACE = saved;
  }
});
