// The studio's other queue jobs (issue 11, item 3): class images for
// Dreambooth's prior preservation, written as a new dataset datasets/NAME
// (src/train/data/class-images.ts); an evaluation as `atelier eval` makes it
// (src/eval/evaluate.ts), written as outputs/eval/NAME/report.html, which the
// Lab page shows; and batch generation, one txt2img job per prompt. Each runs
// in a worker process (job-worker.ts); the server only checks the request:
// every refusal names its field and leaves nothing queued or written.
import { randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseSubjectSpec, resolveSubject, SubjectSpecError } from "../eval/subject.js";
import { SAMPLER_NAMES } from "../schedulers/index.js";
import { shapesBasePath } from "../shapes/base-path.js";
import { checkPictureSize, GENERATE_FIELDS, generateParams, jobJson, workspaceModel } from "./api-jobs.js";
import type { Route } from "./http.js";
import type { StudioContext } from "./studio.js";
import { HttpError, nameSchema } from "./validate.js";
import { LAYOUT } from "./workspace-files.js";

/** `rel` (under the workspace) must not exist yet: a job never overwrites. */
function fresh(root: string, rel: string): string {
  const abs = join(root, rel);
  if (existsSync(abs)) throw new HttpError(409, `body.name: ${rel} exists; pick another name`, "body.name");
  return abs;
}

const seedOf = (s: number | undefined) => s ?? randomInt(2 ** 31);

export function studioJobRoutes(ctx: StudioContext): Route[] {
  return [
    {
      method: "POST",
      path: "/api/class-images",
      summary:
        "queue class-image generation (Dreambooth prior preservation): COUNT txt2img pictures of the class prompt, with captions, into a new dataset datasets/NAME",
      body: {
        type: "object",
        required: ["name", "model", "prompt", "count"],
        properties: {
          name: nameSchema("the new dataset: datasets/NAME"),
          model: nameSchema("the workspace model that draws them (the base model being fine-tuned)"),
          prompt: { type: "string", minLength: 1, maxLength: 10000, description: 'the class prompt, e.g. "a star"' },
          count: { type: "integer", minimum: 1, maximum: 1000 },
          negative: { type: "string", maxLength: 10000 },
          sampler: { type: "string", enum: SAMPLER_NAMES },
          steps: { type: "integer", minimum: 1, maximum: 150 },
          cfg: { type: "number", minimum: 1, maximum: 30 },
          seed: { type: "integer", minimum: 0, maximum: 2 ** 31 },
          width: { type: "integer", minimum: 8, maximum: 2048 },
          height: { type: "integer", minimum: 8, maximum: 2048 },
        },
      },
      handler: ({ body }) => {
        const b = body as {
          name: string;
          model: string;
          prompt: string;
          count: number;
          negative?: string;
          sampler?: string;
          steps?: number;
          cfg?: number;
          seed?: number;
          width?: number;
          height?: number;
        };
        const model = workspaceModel(ctx.root, b.model, "body.model");
        checkPictureSize(b);
        const dir = fresh(ctx.root, `${LAYOUT.datasets}/${b.name}`);
        const seed = seedOf(b.seed);
        return jobJson(
          ctx.enqueue("class-images", b.name, {
            request: { ...b, seed },
            worker: {
              kind: "class-images",
              model: model.weights,
              dir,
              prompt: b.prompt,
              negative: b.negative ?? "",
              count: b.count,
              // A1111 Dreambooth's class_infer_steps / class_guidance_scale defaults
              steps: b.steps ?? 40,
              cfg: b.cfg ?? 7.5,
              seed,
              sampler: b.sampler ?? model.meta.scheduler,
              width: b.width,
              height: b.height,
            },
          }),
        );
      },
    },
    {
      method: "POST",
      path: "/api/eval",
      summary:
        "queue an evaluation (atelier eval: identity, class preservation, prompt following, bleed against a base model), written as outputs/eval/NAME/report.html and eval.json",
      body: {
        type: "object",
        required: ["name", "model"],
        properties: {
          name: nameSchema("the report's folder: outputs/eval/NAME"),
          model: nameSchema("the workspace model evaluated"),
          lora: nameSchema("a LoRA of models/Lora attached to the model (its file name without .safetensors)"),
          lora_scale: { type: "number", minimum: -10, maximum: 10 },
          base: nameSchema("the workspace model compared against (default: the built-in shapes base)"),
          subject: {
            type: "string",
            maxLength: 200,
            description: "TOKEN:CLASS[:COLOUR[:DOT]], e.g. sks:star:yellow:red (default: the built-in subject as sks)",
          },
          samples: { type: "integer", minimum: 1, maximum: 256 },
          steps: { type: "integer", minimum: 1, maximum: 150 },
          seed: { type: "integer", minimum: 0, maximum: 2 ** 31 },
        },
      },
      handler: ({ body }) => {
        const b = body as {
          name: string;
          model: string;
          lora?: string;
          lora_scale?: number;
          base?: string;
          subject?: string;
          samples?: number;
          steps?: number;
          seed?: number;
        };
        const model = workspaceModel(ctx.root, b.model, "body.model");
        const base = b.base === undefined ? null : workspaceModel(ctx.root, b.base, "body.base");
        const basePath = base?.weights ?? shapesBasePath();
        if (!existsSync(basePath))
          throw new HttpError(
            400,
            `body.base: the built-in shapes base ${basePath} is not built; name a base`,
            "body.base",
          );
        if (b.lora_scale !== undefined && b.lora === undefined)
          throw new HttpError(400, "body.lora_scale: goes with body.lora", "body.lora_scale");
        let lora: { path: string; scale: number } | undefined;
        if (b.lora !== undefined) {
          const path = join(ctx.root, LAYOUT.lora, `${b.lora}.safetensors`);
          if (!existsSync(path))
            throw new HttpError(400, `body.lora: no LoRA ${b.lora} in ${LAYOUT.lora}`, "body.lora");
          lora = { path, scale: b.lora_scale ?? 1 };
        }
        if (b.subject !== undefined) {
          try {
            resolveSubject(parseSubjectSpec(b.subject));
          } catch (e) {
            if (e instanceof SubjectSpecError) throw new HttpError(400, `body.subject: ${e.message}`, "body.subject");
            throw e;
          }
        }
        const out = fresh(ctx.root, `${LAYOUT.outputs}/eval/${b.name}`);
        const seed = b.seed ?? 1000;
        return jobJson(
          ctx.enqueue("eval", b.name, {
            request: { ...b, seed },
            worker: {
              kind: "eval",
              name: b.name,
              model: model.weights,
              modelName: b.model,
              base: basePath,
              baseName: b.base ?? "shapes-base",
              lora,
              subject: b.subject,
              samples: b.samples ?? 16,
              steps: b.steps ?? 20,
              seed,
              out,
            },
          }),
        );
      },
    },
    {
      method: "POST",
      path: "/api/generate/batch",
      summary:
        "queue one txt2img job per prompt (A1111's prompts from a list), same settings; prompt i gets seed SEED+i",
      body: {
        type: "object",
        required: ["model", "prompts"],
        properties: {
          ...GENERATE_FIELDS,
          prompts: { type: "array", maxItems: 100, items: { type: "string", maxLength: 10000 } },
          seed: { type: "integer", minimum: 0, maximum: 2 ** 31 },
        },
      },
      handler: ({ body }) => {
        const { prompts, ...settings } = body as { model: string; prompts: string[]; seed?: number };
        if (prompts.length === 0) throw new HttpError(400, "body.prompts: give at least one prompt", "body.prompts");
        const seed = seedOf(settings.seed);
        // every job is checked before any is queued
        const params = prompts.map((prompt, i) => generateParams(ctx.root, { ...settings, prompt, seed: seed + i }));
        return { jobs: params.map((p) => jobJson(ctx.enqueue("generate", settings.model, p))) };
      },
    },
  ];
}
