// `atelier shapes …`: the shapes world from the command line — write a folder
// of its images (or of the Dreambooth subject), and build the base model.
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { buildBase, quickRecipe } from "../shapes/base/build.js";
import { BASE_RECIPE } from "../shapes/base/recipe.js";
import { shapesBasePath, shapesUpscalerPath } from "../shapes/base-path.js";
import { buildUpscaler } from "../shapes/upscaler/build.js";
import { quickUpscalerRecipe, UPSCALER_RECIPE } from "../shapes/upscaler/recipe.js";
import { generateSubject, generateWorld, writeSceneFolder } from "../shapes/world.js";
import { num, parse, str, UsageError } from "./args.js";

const USAGE = `usage:
  atelier shapes world DIR [--n N] [--seed S] [--subject]   write N images with caption files
  atelier shapes build-base [--out DIR] [--quick] [--keep-work] [--samples N] [--vae-from MODEL]
                                 train the base model from random weights (about 105 min on 2 cores);
                                 --vae-from takes the VAE's first two stages from a model built before
  atelier shapes build-upscaler [--out DIR] [--base DIR] [--quick]
                                 train the ×4 upscaler (64² → 256²) sharing the base's text encoder`;

export async function shapesCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "world") return worldCommand(rest);
  if (sub === "build-base") return buildBaseCommand(rest);
  if (sub === "build-upscaler") return buildUpscalerCommand(rest);
  if (sub === undefined || sub === "--help" || sub === "-h") {
    console.log(USAGE);
    return sub ? 0 : 2;
  }
  throw new UsageError(`unknown subcommand '${sub}'\n${USAGE}`);
}

function worldCommand(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    { n: { type: "string" }, seed: { type: "string" }, subject: { type: "boolean" } },
    { min: 1, max: 1, names: "an output folder" },
  );
  const n = num(values, "n", { integer: true, min: 1, max: 1_000_000 }) ?? 100;
  const seed = num(values, "seed", { integer: true, min: 0 }) ?? 0;
  const scenes = values.subject ? generateSubject(seed, n) : generateWorld(seed, n);
  const entries = writeSceneFolder(positionals[0], scenes, {}, { seed, kind: values.subject ? "subject" : "world" });
  console.log(`${entries.length} images with captions in ${resolve(positionals[0])}`);
  return 0;
}

async function buildBaseCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      out: { type: "string" },
      quick: { type: "boolean" },
      "keep-work": { type: "boolean" },
      samples: { type: "string" },
      "vae-from": { type: "string" },
    },
    { min: 0, max: 0, names: "no arguments" },
  );
  const out = resolve(str(values, "out") ?? shapesBasePath());
  const recipe = values.quick ? quickRecipe() : BASE_RECIPE;
  const vaeFrom = str(values, "vae-from");
  if (vaeFrom !== undefined && !existsSync(vaeFrom)) throw new UsageError(`--vae-from ${vaeFrom}: no such model`);
  const r = await buildBase({
    out,
    recipe,
    keepWork: values["keep-work"] === true,
    vaeFrom,
    qualitySamples: num(values, "samples", { integer: true, min: 1, max: 256 }) ?? (values.quick ? 2 : 8),
    log: (line) => console.error(line),
  });
  const q = r.quality;
  console.log(
    `base model in ${r.out} (${(r.seconds / 60).toFixed(1)} min): colour ${pct(q.colour)}, shape ${pct(q.shape)}, both ${pct(q.both)}, background ${pct(q.background)}; prompts mostly right ${pct(q.mostlyRight)}`,
  );
  return 0;
}

const pct = (x: number): string => `${(x * 100).toFixed(0)} %`;

async function buildUpscalerCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    { out: { type: "string" }, base: { type: "string" }, quick: { type: "boolean" } },
    { min: 0, max: 0, names: "no arguments" },
  );
  const base = resolve(str(values, "base") ?? shapesBasePath());
  if (!existsSync(base)) throw new UsageError(`--base ${base}: no such model (atelier shapes build-base)`);
  const out = resolve(str(values, "out") ?? shapesUpscalerPath());
  const r = await buildUpscaler({
    out,
    base,
    recipe: values.quick ? quickUpscalerRecipe() : UPSCALER_RECIPE,
    log: (line) => console.error(line),
  });
  console.log(
    `upscaler in ${r.out} (${(r.seconds / 60).toFixed(1)} min): final vae loss ${r.vaeLoss.toFixed(4)}, unet loss ${r.unetLoss.toFixed(4)}`,
  );
  return 0;
}
