// The optimizer in the training config: kohya's optimizer_type names in any
// case, kohya's optimizer_args ("key=value" with python literals), the
// defaults that depend on the choice, errors that name the field, and the
// optimizer a run builds from it.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Adafactor, AdamW8bit, Lion, Prodigy, tensor } from "../../src/engine/index.js";
import { configToJson } from "../../src/train/config.js";
import { makeOptimizer } from "../../src/train/optimizer-choice.js";
import { checkLeaks } from "../helpers.js";
import { fails, load, minimal } from "./config-world.js";

checkLeaks();

test("kohya's optimizer_type names load in any case, with their defaults", () => {
  const c = load(minimal({ optimizer: "AdamW8bit" }));
  assert.equal(c.optimizer, "adamw8bit");
  assert.equal(c.weight_decay, 0.01);
  assert.deepEqual(c.optimizer_args, []);
  assert.equal(load(minimal({ optimizer: "Lion" })).weight_decay, 0);
  const p = load(minimal({ optimizer: "Prodigy" }));
  assert.equal(p.learning_rate, 1, "Prodigy's lr multiplies its own estimate: 1 by default");
  assert.equal(p.text_encoder_lr, 1);
  assert.equal(load(minimal({ optimizer: "prodigy", learning_rate: 0.5 })).learning_rate, 0.5);
});

test("optimizer_args: python literals, weight_decay moved to its field, the resolved config loads again", () => {
  const c = load(
    minimal({
      optimizer: "Adafactor",
      optimizer_args: ["scale_parameter=False", "relative_step=False", "warmup_init=False", "weight_decay=0.05"],
      learning_rate: 1e-4,
    }),
  );
  assert.equal(c.weight_decay, 0.05);
  assert.deepEqual(c.optimizer_args, ["scale_parameter=False", "relative_step=False", "warmup_init=False"]);
  const again = load(JSON.parse(configToJson(c)));
  assert.deepEqual(again, c);
  const pr = load(
    minimal({ optimizer: "prodigy", optimizer_args: ["betas=(0.9, 0.99)", "growth_rate=inf", "beta3=None"] }),
  );
  assert.equal(pr.optimizer, "prodigy");
});

test("bad optimizer settings: a clear error naming the field", () => {
  const cases: [Record<string, unknown>, RegExp, string][] = [
    [{ optimizer: "rmsprop" }, /optimizer must be one of adamw, adamw8bit, lion, prodigy, adafactor, sgd/, "optimizer"],
    [
      { optimizer: "lion", optimizer_args: ["beta=0.9"] },
      /optimizer_args\[0\]: lion has no argument "beta" \(it takes: weight_decay, betas\)/,
      "optimizer_args[0]",
    ],
    [
      { optimizer: "lion", optimizer_args: ["betas=0.9"] },
      /optimizer_args\[0\]: betas must be two numbers/,
      "optimizer_args[0]",
    ],
    [
      { optimizer: "lion", optimizer_args: ["betas=0.9,1.5"] },
      /Lion: invalid beta parameter at index 1: 1.5/,
      "optimizer_args",
    ],
    [
      { optimizer: "adamw8bit", optimizer_args: ["lr=1"] },
      /no argument "lr" \(the learning rate is the learning_rate field\)/,
      "optimizer_args[0]",
    ],
    [
      { optimizer: "adamw8bit", optimizer_args: ["eps"] },
      /optimizer_args\[0\] must be "key=value"/,
      "optimizer_args[0]",
    ],
    [
      { optimizer: "adafactor", optimizer_args: ["relative_step=maybe"] },
      /relative_step must be True or False/,
      "optimizer_args[0]",
    ],
    [
      { optimizer: "adafactor", learning_rate: 1e-4 },
      /learning_rate is set to 0.0001 but has no effect: adafactor with relative_step=True/,
      "learning_rate",
    ],
    [
      { optimizer: "adafactor", optimizer_args: ["relative_step=False", "warmup_init=True"] },
      /warmup_init=True requires relative_step=True/,
      "optimizer_args",
    ],
    [{ optimizer: "prodigy", optimizer_args: ["d_coef=-1"] }, /Prodigy: invalid d_coef/, "optimizer_args"],
    [
      { optimizer: "prodigy", text_encoder_lr: 0.5 },
      /text_encoder_lr must equal learning_rate with prodigy/,
      "text_encoder_lr",
    ],
    [
      { optimizer: "lion", weight_decay: 0.1, optimizer_args: ["weight_decay=0.2"] },
      /set both as a field and in optimizer_args/,
      "weight_decay",
    ],
    [
      { optimizer: "sgd", optimizer_args: ["momentum=0.9", "momentum=0.8"] },
      /"momentum" is given twice/,
      "optimizer_args[1]",
    ],
  ];
  for (const [fields, message, field] of cases) fails(() => load(minimal(fields)), message, field);
});

test("the run's optimizer is the one chosen, with its arguments", () => {
  const p = tensor([1, 2, 3]).requiresGrad_();
  const made = (optimizer: string, optimizer_args: string[] = []) =>
    makeOptimizer({ optimizer: optimizer as never, optimizer_args, learning_rate: 1e-3, weight_decay: 0.01 }, [
      { params: [p], lr: 1e-3 },
    ]);
  const a = made("adamw8bit", ["betas=0.8,0.9", "min_8bit_size=16"]);
  assert.ok(a instanceof AdamW8bit);
  assert.deepEqual(a.paramGroups[0].betas, [0.8, 0.9]);
  assert.equal((a.paramGroups[0] as unknown as { min8bitSize: number }).min8bitSize, 16);
  const f = made("adafactor");
  assert.ok(f instanceof Adafactor);
  assert.equal(f.paramGroups[0].lr, 0, "relative step: the lr is unused");
  assert.equal(f.paramGroups[0].relativeStep, true);
  const pr = made("prodigy", ["d_coef=0.5", "use_bias_correction=True", "growth_rate=inf"]);
  assert.ok(pr instanceof Prodigy);
  assert.equal(pr.paramGroups[0].dCoef, 0.5);
  assert.equal(pr.paramGroups[0].growthRate, null);
  const l = made("lion");
  assert.ok(l instanceof Lion);
  for (const o of [a, f, pr, l]) o.dispose();
  p.dispose();
});
