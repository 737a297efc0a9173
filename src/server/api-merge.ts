// The merge endpoints: bake LoRA files of models/Lora into a checkpoint
// (src/tools/merge-lora.ts, kohya's merge_lora.py) and A1111's checkpoint
// merger (src/tools/checkpoint-merger.ts). Both are queue jobs run in a
// worker process (job-worker.ts); the result is written into
// models/Stable-diffusion/NAME.safetensors, where the Models page lists it
// as a source. The server only checks the request and confines its paths.
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { jobJson, workspaceModel } from "./api-jobs.js";
import type { Route } from "./http.js";
import type { StudioContext } from "./studio.js";
import { HttpError, type JsonSchema, nameSchema } from "./validate.js";
import { confine, LAYOUT } from "./workspace-files.js";

const checkpointPath = (what: string): JsonSchema => ({
  type: "string",
  maxLength: 1000,
  description: `${what}: a single-file checkpoint, relative to the workspace (e.g. models/Stable-diffusion/x.safetensors)`,
});

/** A workspace-relative checkpoint file that exists, as an absolute path. */
function checkpointFile(root: string, rel: string, field: string): string {
  const abs = confine(root, rel, field);
  if (!existsSync(abs) || !statSync(abs).isFile())
    throw new HttpError(400, `${field}: no file ${rel} in the workspace`, field);
  if (!/\.(safetensors|ckpt)$/i.test(abs)) {
    throw new HttpError(400, `${field}: ${rel} is not a .safetensors or .ckpt checkpoint`, field);
  }
  return abs;
}

/** models/Stable-diffusion/NAME.safetensors, refused when it exists (a merge never overwrites). */
function outputFile(root: string, name: string): string {
  const out = join(root, LAYOUT.checkpoints, `${name}.safetensors`);
  if (existsSync(out)) {
    throw new HttpError(
      409,
      `body.name: ${LAYOUT.checkpoints}/${name}.safetensors exists; pick another name`,
      "body.name",
    );
  }
  return out;
}

export function mergeRoutes(ctx: StudioContext): Route[] {
  return [
    {
      method: "POST",
      path: "/api/merge/lora",
      summary:
        "queue a merge of models/Lora files into a checkpoint, written as models/Stable-diffusion/NAME.safetensors",
      body: {
        type: "object",
        required: ["name", "checkpoint", "loras"],
        properties: {
          name: nameSchema("the merged checkpoint's name: models/Stable-diffusion/NAME.safetensors"),
          checkpoint: checkpointPath("the checkpoint the LoRAs are merged into (or a workspace model's name)"),
          loras: {
            type: "array",
            maxItems: 32,
            items: {
              type: "object",
              required: ["name"],
              properties: {
                name: nameSchema("a LoRA of models/Lora (its file name without .safetensors)"),
                weight: { type: "number", minimum: -10, maximum: 10 },
              },
            },
          },
        },
      },
      handler: ({ body }) => {
        const b = body as { name: string; checkpoint: string; loras: { name: string; weight?: number }[] };
        // a bare name is a model of the workspace (made on the Models page): its diffusers weights
        const checkpoint =
          /^[^/\\]+$/.test(b.checkpoint) && !/\.(safetensors|ckpt)$/i.test(b.checkpoint)
            ? workspaceModel(ctx.root, b.checkpoint, "body.checkpoint").weights
            : checkpointFile(ctx.root, b.checkpoint, "body.checkpoint");
        if (b.loras.length === 0) throw new HttpError(400, "body.loras: name at least one LoRA", "body.loras");
        const loras = b.loras.map((l, i) => {
          const path = join(ctx.root, LAYOUT.lora, `${l.name}.safetensors`);
          if (!existsSync(path)) {
            throw new HttpError(
              400,
              `body.loras[${i}].name: no LoRA ${l.name} in ${LAYOUT.lora}`,
              `body.loras[${i}].name`,
            );
          }
          return { path, weight: l.weight ?? 1 };
        });
        const out = outputFile(ctx.root, b.name);
        return jobJson(
          ctx.enqueue("merge-lora", b.name, { request: b, worker: { kind: "merge-lora", checkpoint, loras, out } }),
        );
      },
    },
    {
      method: "POST",
      path: "/api/merge/checkpoints",
      summary:
        "queue A1111's checkpoint merger (weighted sum A·(1−M)+B·M, or add difference A+(B−C)·M), written as models/Stable-diffusion/NAME.safetensors",
      body: {
        type: "object",
        required: ["name", "a", "mode"],
        properties: {
          name: nameSchema("the merged checkpoint's name: models/Stable-diffusion/NAME.safetensors"),
          a: checkpointPath("model A"),
          b: checkpointPath("model B"),
          c: checkpointPath("model C (add difference)"),
          mode: { type: "string", enum: ["weighted_sum", "add_difference", "none"] },
          multiplier: { type: "number", minimum: 0, maximum: 1 },
        },
      },
      handler: ({ body }) => {
        const b = body as { name: string; a: string; b?: string; c?: string; mode: string; multiplier?: number };
        const a = checkpointFile(ctx.root, b.a, "body.a");
        const needs = b.mode === "add_difference" ? ["b", "c"] : b.mode === "weighted_sum" ? ["b"] : [];
        for (const k of needs) {
          if (b[k as "b" | "c"] === undefined) {
            throw new HttpError(400, `body.${k}: the ${b.mode} merge needs model ${k.toUpperCase()}`, `body.${k}`);
          }
        }
        const bPath = b.b === undefined ? undefined : checkpointFile(ctx.root, b.b, "body.b");
        const cPath = b.c === undefined ? undefined : checkpointFile(ctx.root, b.c, "body.c");
        const out = outputFile(ctx.root, b.name);
        return jobJson(
          ctx.enqueue("merge-checkpoints", b.name, {
            request: b,
            worker: {
              kind: "merge-checkpoints",
              a,
              b: bPath,
              c: cPath,
              mode: b.mode,
              multiplier: b.multiplier ?? 0.5,
              out,
            },
          }),
        );
      },
    },
  ];
}
