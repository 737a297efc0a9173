// The optimizer of a run, from the config: `optimizer` (kohya's
// optimizer_type names, any case: AdamW, AdamW8bit, Lion, Prodigy,
// Adafactor, SGD) and `optimizer_args`, kohya's list of "key=value" strings
// whose keys are the optimizer's own python argument names (torch.optim,
// bitsandbytes, lion-pytorch, prodigyopt, transformers) and whose values are
// python literals (True, None, 0.9,0.99, inf).

import { scope, type Tensor, tensor } from "../engine/index.js";
import {
  Adafactor,
  AdamW,
  AdamW8bit,
  type GroupHyper,
  Lion,
  type Optimizer,
  Prodigy,
  SGD,
} from "../engine/optim/index.js";
import type { OptimizerName } from "./config-core.js";

type ArgKind = "number" | "int" | "bool" | "pair" | "number|None" | "number|inf";

const COMMON: Record<string, ArgKind> = { weight_decay: "number" };

/** The arguments each optimizer takes, by their python names. */
export const OPTIMIZER_ARGS: Readonly<Record<OptimizerName, Readonly<Record<string, ArgKind>>>> = {
  adamw: { ...COMMON, betas: "pair", eps: "number", amsgrad: "bool" },
  adamw8bit: { ...COMMON, betas: "pair", eps: "number", min_8bit_size: "int" },
  sgd: { ...COMMON, momentum: "number", dampening: "number", nesterov: "bool" },
  lion: { ...COMMON, betas: "pair" },
  adafactor: {
    ...COMMON,
    eps: "pair",
    clip_threshold: "number",
    decay_rate: "number",
    beta1: "number|None",
    scale_parameter: "bool",
    relative_step: "bool",
    warmup_init: "bool",
  },
  prodigy: {
    ...COMMON,
    betas: "pair",
    beta3: "number|None",
    eps: "number",
    decouple: "bool",
    use_bias_correction: "bool",
    safeguard_warmup: "bool",
    d0: "number",
    d_coef: "number",
    growth_rate: "number|inf",
    slice_p: "int",
  },
};

const KIND_TEXT: Record<ArgKind, string> = {
  number: "a number",
  int: "an integer",
  bool: "True or False",
  pair: "two numbers (e.g. 0.9,0.999)",
  "number|None": "a number or None",
  "number|inf": "a number or inf",
};

type Err = (field: string, message: string) => Error;

function literal(text: string, kind: ArgKind): unknown {
  const t = text.trim();
  const num = (s: string) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : undefined);
  switch (kind) {
    case "number":
      return num(t);
    case "int": {
      const n = num(t);
      return n !== undefined && Number.isSafeInteger(n) ? n : undefined;
    }
    case "bool":
      return /^true$/i.test(t) ? true : /^false$/i.test(t) ? false : undefined;
    case "pair": {
      const parts = t.replace(/^[([]|[)\]]$/g, "").split(",");
      const ns = parts.map(num);
      return ns.length === 2 && ns.every((n) => n !== undefined) ? ns : undefined;
    }
    case "number|None":
      return /^none$/i.test(t) ? null : num(t);
    case "number|inf":
      return /^(float\(['"])?inf(['"]\))?$/i.test(t) ? null : num(t);
  }
}

/**
 * The optimizer_args as a table of checked python-named values, or a clear
 * error naming optimizer_args[i]. `weight_decay` is returned apart: it is the
 * config's weight_decay field.
 */
export function parseOptimizerArgs(
  name: OptimizerName,
  args: readonly string[],
  err: Err,
): { args: Record<string, unknown>; weightDecay?: number } {
  const known = OPTIMIZER_ARGS[name];
  const out: Record<string, unknown> = {};
  let weightDecay: number | undefined;
  args.forEach((a, i) => {
    const field = `optimizer_args[${i}]`;
    const eq = a.indexOf("=");
    if (eq <= 0)
      throw err(
        field,
        `${field} must be "key=value" (kohya's form, e.g. "weight_decay=0.01"), got ${JSON.stringify(a)}`,
      );
    const key = a.slice(0, eq).trim();
    const kind = known[key];
    if (!Object.hasOwn(known, key)) {
      const why = key === "lr" ? " (the learning rate is the learning_rate field)" : "";
      throw err(field, `${field}: ${name} has no argument "${key}"${why} (it takes: ${Object.keys(known).join(", ")})`);
    }
    if (Object.hasOwn(out, key) || (key === "weight_decay" && weightDecay !== undefined)) {
      throw err(field, `${field}: "${key}" is given twice`);
    }
    const v = literal(a.slice(eq + 1), kind);
    if (v === undefined)
      throw err(field, `${field}: ${key} must be ${KIND_TEXT[kind]}, got ${JSON.stringify(a.slice(eq + 1))}`);
    if (key === "weight_decay") weightDecay = v as number;
    else out[key] = v;
  });
  return { args: out, weightDecay };
}

const camel = (k: string) => k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Whether this choice computes its own step size (Adafactor's relative_step, on by default). */
export function ownStepSize(name: OptimizerName, args: Record<string, unknown>): boolean {
  return name === "adafactor" && args.relative_step !== false;
}

export interface OptimizerChoice {
  optimizer: OptimizerName;
  optimizer_args: readonly string[];
  learning_rate: number;
  weight_decay: number;
}

/** The optimizer of the config over these groups (per-group lrs), its arguments checked. */
export function makeOptimizer(
  c: OptimizerChoice,
  groups: { params: Tensor[]; lr: number }[],
  err: Err = (field, message) => new Error(`${field}: ${message}`),
): Optimizer<GroupHyper> {
  const { args } = parseOptimizerArgs(c.optimizer, c.optimizer_args, err);
  const o: Record<string, unknown> = { lr: c.learning_rate, weightDecay: c.weight_decay };
  for (const [k, v] of Object.entries(args)) o[camel(k)] = v;
  // Adafactor's relative step ignores the lr (transformers wants lr=None): the groups get 0.
  const own = ownStepSize(c.optimizer, args);
  const gs = own ? groups.map((g) => ({ ...g, lr: 0 })) : groups;
  if (own) o.lr = 0;
  try {
    switch (c.optimizer) {
      case "sgd":
        return new SGD(gs, o as never);
      case "adamw8bit":
        return new AdamW8bit(gs, o as never);
      case "lion":
        return new Lion(gs, o as never);
      case "adafactor":
        return new Adafactor(gs, o as never);
      case "prodigy":
        return new Prodigy(gs, o as never);
      default:
        return new AdamW(gs, o as never);
    }
  } catch (e) {
    throw err("optimizer_args", `optimizer ${c.optimizer}: ${(e as Error).message}`);
  }
}

/** Checks the choice by building it over one small tensor (nothing is kept), or throws err(field, …). */
export function checkOptimizerChoice(c: OptimizerChoice, err: Err): void {
  scope(() => {
    const p = tensor([0, 0]).requiresGrad_();
    makeOptimizer(c, [{ params: [p], lr: c.learning_rate }], err).dispose();
  });
}

export interface OptimizerResolveContext {
  given(path: string): unknown;
  isAuto(v: unknown): boolean;
  error: Err;
  pointless(path: string, dflt: unknown, why: string): void;
}

type Resolvable = OptimizerChoice & { optimizer_args: string[] };

/**
 * Resolves and checks the optimizer fields of a config being loaded:
 * optimizer_args' weight_decay moves to the weight_decay field (so the
 * resolved config loads again), weight_decay's default, Prodigy's lr of 1,
 * and what has no effect with a relative-step Adafactor.
 */
export function resolveOptimizer(c: Resolvable, ctx: OptimizerResolveContext): void {
  const { args, weightDecay } = parseOptimizerArgs(c.optimizer, c.optimizer_args, ctx.error);
  if (weightDecay !== undefined) {
    if (ctx.given("weight_decay") !== undefined) {
      throw ctx.error("weight_decay", "weight_decay is set both as a field and in optimizer_args: keep one");
    }
    if (!(weightDecay >= 0 && weightDecay <= 1)) {
      throw ctx.error(
        "optimizer_args",
        `optimizer_args: weight_decay must be a number >= 0 and <= 1, got ${weightDecay}`,
      );
    }
    c.weight_decay = weightDecay;
    c.optimizer_args = c.optimizer_args.filter((a) => a.slice(0, a.indexOf("=")).trim() !== "weight_decay");
  } else if (ctx.isAuto(c.weight_decay)) {
    c.weight_decay = c.optimizer === "adamw" || c.optimizer === "adamw8bit" ? 0.01 : 0;
  }
  if (c.optimizer === "prodigy") {
    // Prodigy's lr scales its own estimate: 1 unless tuned (prodigyopt's advice).
    if (ctx.given("learning_rate") === undefined) c.learning_rate = 1;
    const te = ctx.given("text_encoder_lr");
    if (te !== undefined && te !== c.learning_rate) {
      throw ctx.error(
        "text_encoder_lr",
        "text_encoder_lr must equal learning_rate with prodigy: one step size is estimated for all parameters (prodigyopt refuses different lrs)",
      );
    }
  }
  if (ownStepSize(c.optimizer, args)) {
    const why =
      'adafactor with relative_step=True computes its own step size (optimizer_args = ["relative_step=False"] uses learning_rate)';
    ctx.pointless("learning_rate", null, why);
    ctx.pointless("text_encoder_lr", null, why);
    ctx.pointless("lr_scheduler", "constant", why);
    ctx.pointless("lr_warmup_steps", 0, why);
  }
  checkOptimizerChoice(c, ctx.error);
}
