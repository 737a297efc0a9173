// The training config: JSON and TOML, defaults, --FIELD overrides, errors that
// name the field (with suggestions), relative paths. Cross-field and file
// checks, the resolved JSON and check-config: config-checks.test.ts.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { configFields, loadTrainConfig } from "../../src/train/config.js";
import { dir, fails, load, minimal, opts, sub } from "./config-world.js";

test("JSON and TOML configs parse to the same object", () => {
  const a = load(join(sub, "cfg.toml"));
  const b = load(join(sub, "cfg.json"));
  assert.deepEqual(a, b);
  assert.equal(a.model, join(sub, "base.safetensors"));
  assert.equal(a.concepts[0].class_data_dir, join(sub, "class"));
  assert.equal(a.concepts[1].class_data_dir, null);
  assert.equal(a.concepts[1].num_class_images, 0);
  assert.equal(a.lora.alpha, 8);
  assert.equal(a.lora.conv_alpha, 4);
  assert.equal(a.lora.text_encoder, false);
  assert.equal(a.use_lora, true);
});

test("defaults: SD1.5 Dreambooth, and LoRA's where they differ", () => {
  const c = load(minimal());
  const keys = configFields().map((f) => f.name.split(/[.[]/)[0]);
  assert.deepEqual(Object.keys(c), [...new Set(keys)]);
  assert.equal(c.method, "dreambooth");
  assert.equal(c.use_lora, false);
  assert.equal(c.learning_rate, 2e-6);
  assert.equal(c.text_encoder_lr, 2e-6);
  assert.equal(c.resolution, 512);
  assert.equal(c.batch_size, 1);
  assert.equal(c.epochs, 100);
  assert.equal(c.max_steps, 0);
  assert.equal(c.prior_loss_weight, 1);
  assert.equal(c.optimizer, "adamw");
  assert.equal(c.weight_decay, 0.01);
  assert.equal(c.lr_scheduler, "constant");
  assert.equal(c.mixed_precision, "no");
  assert.equal(c.train_text_encoder, true);
  assert.equal(c.max_grad_norm, 1);
  assert.equal(c.clip_skip, 1);
  assert.deepEqual(c.save.formats, ["ldm_safetensors"]);
  assert.equal(c.sample.sampler, "euler_a");
  assert.ok(Number.isInteger(c.seed) && c.seed >= 0 && c.seed < 2 ** 32);
  assert.equal(c.sample.seed, c.seed);
  assert.equal(c.workspace, join(dir, "ws"));
  assert.equal(c.tokenizer, null);
  assert.deepEqual(c.concepts[0], {
    instance_data_dir: join(sub, "dog"),
    instance_prompt: "photo of sks dog",
    class_data_dir: null,
    class_prompt: null,
    num_class_images: 0,
    class_guidance_scale: 7.5,
    class_infer_steps: 40,
    class_batch_size: 1,
    repeats: 1,
    caption_extension: ".txt",
    shuffle_tags: false,
    keep_tokens: 0,
  });
  assert.deepEqual(c.lora, {
    rank: 4,
    alpha: 4,
    dropout: 0,
    unet: true,
    text_encoder: true,
    conv_rank: 0,
    conv_alpha: 0,
    algo: "lora",
    rank_dropout: 0,
    rank_dropout_scale: false,
    module_dropout: 0,
    factor: -1,
    decompose_both: false,
    use_tucker: false,
    weight_decompose: false,
    dora_on_output: false,
    train_norm: false,
    network_args: [],
  });
  assert.deepEqual(c.bucketing, { enabled: false, min: 256, max: 1024, step: 64 });

  const l = load(minimal({ method: "lora", optimizer: "sgd" }));
  assert.equal(l.learning_rate, 1e-4);
  assert.equal(l.use_lora, true);
  assert.deepEqual(l.save.formats, ["lora"]);
  assert.equal(l.weight_decay, 0);
  // Dreambooth with use_lora is the same run.
  const u = load(minimal({ use_lora: true }));
  assert.equal(u.learning_rate, 1e-4);
  assert.deepEqual(u.save.formats, ["lora"]);
  // Class data brings 100 class images by default.
  const k = load(
    minimal({
      concepts: [{ instance_data_dir: "dog", instance_prompt: "x", class_data_dir: "class", class_prompt: "dog" }],
    }),
  );
  assert.equal(k.concepts[0].num_class_images, 100);
});

test("overrides: top-level, nested, booleans, lists, concepts, JSON, nulls", () => {
  const c = load(join(sub, "cfg.toml"), [
    "--learning_rate",
    "5e-5",
    "--resolution=512",
    "--batch-size",
    "2",
    "--lora.rank",
    "32",
    "--lora.conv-rank=0",
    "--save.every_n_steps",
    "250",
    "--gradient_checkpointing",
    "--cache_latents",
    "false",
    "--sample.prompts",
    "a red fox",
    "--sample.prompts",
    "a blue fox",
    "--save.formats",
    '["lora"]',
    "--concepts.0.instance_prompt",
    "photo of zwx dog",
    "--concepts[1].repeats",
    "3",
    "--concepts.2.instance_data_dir",
    "imgs",
    "--concepts.2.instance_prompt",
    "third",
    "--concepts.0.class_data_dir",
    "none",
    "--concepts.0.class_prompt",
    "none",
    "--concepts.0.num_class_images",
    "0",
    "--prior_loss_weight",
    "1",
    "--bucketing",
    '{"enabled": true, "min": 384}',
  ]);
  assert.equal(c.learning_rate, 5e-5);
  assert.equal(c.text_encoder_lr, 5e-5);
  assert.equal(c.resolution, 512);
  assert.equal(c.batch_size, 2);
  assert.equal(c.lora.rank, 32);
  assert.equal(c.lora.alpha, 8); // still the file's
  assert.equal(c.lora.conv_rank, 0);
  assert.equal(c.save.every_n_steps, 250);
  assert.equal(c.gradient_checkpointing, true);
  assert.equal(c.cache_latents, false);
  assert.deepEqual(c.sample.prompts, ["a red fox", "a blue fox"]);
  assert.deepEqual(c.save.formats, ["lora"]);
  assert.equal(c.concepts.length, 3);
  assert.equal(c.concepts[0].instance_prompt, "photo of zwx dog");
  assert.equal(c.concepts[0].class_data_dir, null);
  assert.equal(c.concepts[1].repeats, 3);
  // A path given by a flag is relative to the current folder, not the config's.
  assert.equal(c.concepts[2].instance_data_dir, join(dir, "elsewhere", "imgs"));
  assert.deepEqual(c.bucketing, { enabled: true, min: 384, max: 1024, step: 64 });

  // The whole concepts list as JSON; a flag-only config; one value with '='.
  const d = loadTrainConfig(
    undefined,
    [
      "--model",
      "../project/base.safetensors",
      "--output_dir=out",
      "--concepts",
      '[{"instance_data_dir": "imgs", "instance_prompt": "sks"}]',
      "--tokenizer",
      "none",
      "--method",
      "lora",
      "--lora",
      '{"rank": 2}',
    ],
    opts,
  );
  assert.equal(d.model, join(sub, "base.safetensors"));
  assert.equal(d.output_dir, join(dir, "elsewhere", "out"));
  assert.equal(d.concepts[0].instance_data_dir, join(dir, "elsewhere", "imgs"));
  assert.equal(d.lora.rank, 2);
  assert.equal(d.lora.alpha, 2);
});

test("unknown fields are errors that name them and suggest the right one", () => {
  const cases: [Record<string, unknown>, RegExp, string][] = [
    [minimal({ learning_rat: 1e-5 }), /unknown field "learning_rat"; did you mean "learning_rate"\?/, "learning_rat"],
    [minimal({ lora: { rnak: 4 } }), /unknown field "lora.rnak"; did you mean "lora.rank"\?/, "lora.rnak"],
    [minimal({ rank: 4 }), /unknown field "rank"; did you mean "lora.rank"\?/, "rank"],
    [
      minimal({ network_dim: 8 }),
      /unknown field "network_dim"; did you mean "lora.rank"\? \(network_dim is its name in other trainers\)/,
      "network_dim",
    ],
    [minimal({ lora_rank: 8 }), /did you mean "lora.rank"\?/, "lora_rank"],
    [
      minimal({ concepts: [{ instance_data_dir: "dog", instance_promt: "x" }] }),
      /unknown field "concepts\[0\].instance_promt"; did you mean "concepts\[\].instance_prompt"\?/,
      "concepts[0].instance_promt",
    ],
    [minimal({ zzzzzz: 1 }), /unknown field "zzzzzz"$/, "zzzzzz"],
    [minimal({ constructor: 1 }), /unknown field "constructor"$/, "constructor"],
    [
      minimal({ optimizer: "constructor" }),
      /optimizer must be one of adamw, adamw8bit, lion, prodigy, adafactor, sgd, got "constructor"$/,
      "optimizer",
    ],
  ];
  for (const [cfg, message, field] of cases) fails(() => load(cfg), message, field);
  fails(
    () => load(minimal(), ["--lora.rnak", "3"]),
    /--lora.rnak: unknown field "lora.rnak"; did you mean "lora.rank"\?/,
  );
  fails(() => load(minimal(), ["--seed.x", "3"]), /seed is not a table/);
  fails(() => load(minimal(), ["--concepts.5.repeats", "3"]), /"5" is not an index of concepts \(0…1; 1 adds one\)/);
  fails(() => load(minimal(), ["stray"]), /unexpected argument 'stray'/);
  // The file is named in the message.
  writeFileSync(join(sub, "typo.toml"), 'model = "base.safetensors"\nouput_dir = "out"\n');
  fails(() => load(join(sub, "typo.toml")), /typo\.toml: unknown field "ouput_dir"; did you mean "output_dir"\?/);
});

test("types and ranges: errors name the field and the value", () => {
  const cases: [Record<string, unknown>, RegExp, string][] = [
    [minimal({ learning_rate: 0 }), /learning_rate must be a number > 0 and <= 1, got 0/, "learning_rate"],
    [minimal({ learning_rate: "2e-6" }), /learning_rate must be a number .*, got "2e-6"/, "learning_rate"],
    [
      minimal({ resolution: 500 }),
      /resolution must be an integer >= 8 and <= 8192, a multiple of 8, got 500/,
      "resolution",
    ],
    [minimal({ batch_size: 1.5 }), /batch_size must be an integer >= 1/, "batch_size"],
    [
      minimal({ optimizer: "PagedAdamW8bit" }),
      /optimizer: "PagedAdamW8bit" is not available: paged optimizers .* use adamw8bit/,
      "optimizer",
    ],
    [minimal({ optimizer: "Adam W" }), /optimizer must be one of adamw, adamw8bit/, "optimizer"],
    [minimal({ mixed_precision: "fp8" }), /mixed_precision must be one of no, fp16, bf16/, "mixed_precision"],
    [minimal({ lr_scheduler: "cosine_annealing" }), /lr_scheduler must be one of linear, cosine/, "lr_scheduler"],
    [
      minimal({ save: { formats: ["ckpt"] } }),
      /save.formats\[0\] must be one of ldm_safetensors, diffusers, lora/,
      "save.formats[0]",
    ],
    [minimal({ save: { formats: [] } }), /save.formats must not be empty/, "save.formats"],
    [
      minimal({ save: { formats: ["diffusers", "diffusers"] } }),
      /save.formats lists "diffusers" twice/,
      "save.formats",
    ],
    [minimal({ save: 3 }), /save must be a table, got 3/, "save"],
    [minimal({ concepts: { instance_data_dir: "dog" } }), /concepts must be a list of tables, got a table/, "concepts"],
    [
      minimal({ concepts: [{ instance_data_dir: "dog", instance_prompt: "x", caption_extension: "txt" }] }),
      /caption_extension must be an extension starting with "."/,
      "concepts[0].caption_extension",
    ],
    [minimal({ lora: { dropout: 1 } }), /lora.dropout must be a number >= 0 and < 1, got 1/, "lora.dropout"],
    [minimal({ noise_offset: -0.1 }), /noise_offset must be a number >= 0 and <= 1/, "noise_offset"],
    [minimal({ sample: { sampler: "plms" } }), /sample.sampler must be one of ddpm, ddim/, "sample.sampler"],
    [minimal({ model: "" }), /model must be a path/, "model"],
    [
      minimal({ train_text_encoder: "yes" }),
      /train_text_encoder must be true or false, got "yes"/,
      "train_text_encoder",
    ],
    [minimal({ seed: null }), /seed must be an integer/, "seed"],
  ];
  for (const [cfg, message, field] of cases) fails(() => load(cfg), message, field);
  const flags: [string[], RegExp][] = [
    [["--epochs", "abc"], /--epochs must be an integer >= 1, got 'abc'/],
    [["--epochs", "0"], /--epochs must be an integer >= 1, got 0/],
    [["--cache_latents", "maybe"], /--cache_latents must be true or false, got 'maybe'/],
    [["--lora.rank"], /--lora.rank needs a value/],
    [["--save.formats", "[lora"], /--save.formats: not valid JSON/],
    [["--concepts", '[{"instance_data_dir": 3}]'], /--concepts: concepts\[0\].instance_data_dir must be a path/],
    [["--optimizer", "lion8bit"], /--optimizer: "lion8bit" is not available/],
  ];
  for (const [argv, message] of flags) fails(() => load(minimal(), argv), message);
  writeFileSync(join(sub, "date.toml"), 'model = 1979-05-27\noutput_dir = "out"\n');
  fails(() => load(join(sub, "date.toml")), /date\.toml: model must be a path .*, got a date/, "model");
});

test("required fields, and files that cannot be read", () => {
  fails(
    () => load({ output_dir: "o", concepts: [{ instance_data_dir: "dog", instance_prompt: "" }] }),
    /model is required/,
    "model",
  );
  fails(
    () => load({ model: "base.safetensors", concepts: minimal().concepts }),
    /output_dir is required/,
    "output_dir",
  );
  fails(
    () => load({ model: "base.safetensors", output_dir: "o" }),
    /concepts is required: at least one entry/,
    "concepts",
  );
  fails(() => load(minimal({ concepts: [{ instance_data_dir: "dog" }] })), /concepts\[0\].instance_prompt is required/);
  fails(() => load(join(sub, "none.toml")), /none\.toml: no such file/);
  writeFileSync(join(sub, "cfg.yaml"), "model: x");
  fails(() => load(join(sub, "cfg.yaml")), /must be \.json or \.toml/);
  writeFileSync(join(sub, "bad.toml"), "model = \n");
  fails(() => load(join(sub, "bad.toml")), /bad\.toml: not valid TOML/);
  // The reason, where, and the user's line quoted: the text is the user's, not an internal `undefined`.
  writeFileSync(join(sub, "bare.toml"), 'output_dir = "o"\nformats = [ undefined ]\n');
  fails(
    () => load(join(sub, "bare.toml")),
    /bare\.toml: not valid TOML: invalid value at line 2, column \d+: "formats = \[ undefined \]"$/,
  );
  writeFileSync(join(sub, "bad.json"), "{ model: 1 }");
  fails(() => load(join(sub, "bad.json")), /bad\.json: not valid JSON/);
  writeFileSync(join(sub, "list.json"), "[1, 2]");
  fails(() => load(join(sub, "list.json")), /the config must be a table/);
});

test("relative paths resolve against the config file's folder; ~ is the home folder", () => {
  writeFileSync(
    join(sub, "paths.toml"),
    'model = "base.safetensors"\noutput_dir = "../runs/a"\ntokenizer = "~/tok"\n[[concepts]]\ninstance_data_dir = "dog"\ninstance_prompt = "x"\n',
  );
  const c = loadTrainConfig(join(sub, "paths.toml"), [], { ...opts, checkFiles: false });
  assert.equal(c.output_dir, join(dir, "runs", "a"));
  assert.equal(c.model, join(sub, "base.safetensors"));
  assert.equal(c.tokenizer, join(homedir(), "tok"));
  assert.equal(c.concepts[0].instance_data_dir, join(sub, "dog"));
  // The same file named relative to the current folder.
  const d = loadTrainConfig("../project/paths.toml", ["--tokenizer", "none"], opts);
  assert.equal(d.output_dir, join(dir, "runs", "a"));
});
