// The job endpoints: check a training config (resolved, and as TOML), queue
// a training or a generation, list and inspect jobs, pause / resume /
// cancel, and stream a job's events (server-sent events).
import { randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { configFields, openModel, SAMPLER_NAMES, WorkspaceError } from "../index.js";
import type { Route } from "./http.js";
import type { Job } from "./queue.js";
import type { StudioContext } from "./studio.js";
import { configToml, studioConfig } from "./train-config.js";
import { resolveUpscaler } from "./upscalers.js";
import { HttpError, type JsonSchema, nameSchema } from "./validate.js";
import { LAYOUT } from "./workspace-files.js";

const jobId: JsonSchema = { type: "integer", minimum: 1, description: "a job id" };
const trainBody: JsonSchema = {
  type: "object",
  required: ["name", "config"],
  properties: {
    name: nameSchema("the run's name: runs/NAME, and the LoRA's models/Lora/NAME.safetensors"),
    config: {
      type: "object",
      properties: {},
      additionalProperties: true,
      description: "the training config's fields (atelier check-config --help); paths relative to the workspace",
    },
  },
};

/** The txt2img settings /api/generate and /api/generate/batch share. */
export const GENERATE_FIELDS: Record<string, JsonSchema> = {
  model: nameSchema("a workspace model"),
  negative: { type: "string", maxLength: 10000 },
  sampler: { type: "string", enum: SAMPLER_NAMES },
  steps: { type: "integer", minimum: 1, maximum: 150 },
  cfg: { type: "number", minimum: 0, maximum: 30 },
  seed: { type: "integer", minimum: 0, maximum: 2 ** 32 - 1 },
  width: { type: "integer", minimum: 8, maximum: 2048 },
  height: { type: "integer", minimum: 8, maximum: 2048 },
  batch: { type: "integer", minimum: 1, maximum: 16 },
  /** Two-stage generation: the pictures, then ×4 through this upscaler (GET /api/workspace lists them). */
  upscaler: { type: "string", minLength: 1, maxLength: 200 },
  noise_level: { type: "integer", minimum: 0, maximum: 1000 },
  upscaler_steps: { type: "integer", minimum: 1, maximum: 150 },
};

export type GenerateBody = Record<string, unknown> & { model: string; prompt: string };

/** A workspace model by name; an unknown one is a 400 naming `field`. */
export function workspaceModel(root: string, name: string, field: string): ReturnType<typeof openModel> {
  try {
    return openModel(name, join(root, LAYOUT.models));
  } catch (e) {
    if (e instanceof WorkspaceError) throw new HttpError(400, `${field}: ${e.message}`, field);
    throw e;
  }
}

/** A request's width and height: multiples of 8 (the VAE's downsampling), a 400 naming the field. */
export function checkPictureSize(b: Record<string, unknown>): void {
  for (const k of ["width", "height"] as const) {
    if (b[k] !== undefined && (b[k] as number) % 8 !== 0)
      throw new HttpError(400, `body.${k}: must be a multiple of 8, got ${b[k]}`, `body.${k}`);
  }
}

/** A checked txt2img request as a generate job's parameters (the worker's part included). */
export function generateParams(root: string, b: GenerateBody): Record<string, unknown> {
  const model = workspaceModel(root, b.model, "body.model");
  checkPictureSize(b);
  const noiseLevel = b.noise_level as number | undefined;
  const upscalerSteps = b.upscaler_steps as number | undefined;
  if (b.upscaler === undefined && (noiseLevel !== undefined || upscalerSteps !== undefined)) {
    const field = noiseLevel !== undefined ? "body.noise_level" : "body.upscaler_steps";
    throw new HttpError(400, `${field}: goes with body.upscaler`, field);
  }
  const upscaler =
    b.upscaler === undefined
      ? undefined
      : { path: resolveUpscaler(root, b.upscaler as string, noiseLevel), noiseLevel, steps: upscalerSteps };
  const seed = (b.seed as number | undefined) ?? randomInt(2 ** 31);
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
  const request = { ...b, seed };
  return {
    request,
    worker: {
      kind: "generate",
      model: model.weights,
      modelName: b.model,
      loraDir: join(root, LAYOUT.lora),
      embeddingsDir: join(root, LAYOUT.embeddings),
      hypernetworkDir: join(root, LAYOUT.hypernetworks),
      out: join(root, LAYOUT.outputs, "txt2img", `${stamp}-${seed}.png`),
      prompt: b.prompt,
      negative: (b.negative as string | undefined) ?? "",
      sampler: (b.sampler as string | undefined) ?? model.meta.scheduler,
      steps: (b.steps as number | undefined) ?? 20,
      cfg: (b.cfg as number | undefined) ?? 7,
      seed,
      width: (b.width as number | undefined) ?? 64,
      height: (b.height as number | undefined) ?? 64,
      batch: (b.batch as number | undefined) ?? 1,
      upscaler,
    },
  };
}

const ACTIVE = new Set(["queued", "running", "paused"]);

function findJob(ctx: StudioContext, id: string): Job {
  const job = ctx.queue.get(Number(id));
  if (!job) throw new HttpError(404, `no job ${id}`);
  return job;
}

/** A job as the API shows it (the worker's private parameters left out). */
export function jobJson(j: Job) {
  const { params, ...rest } = j;
  return { ...rest, config: params.config ?? null, request: params.request ?? null };
}

export function jobRoutes(ctx: StudioContext): Route[] {
  return [
    {
      method: "GET",
      path: "/api/config/fields",
      summary: "every training config field with its type, default and doc line (atelier check-config --help)",
      handler: () => configFields(),
    },
    {
      method: "POST",
      path: "/api/train/check",
      summary: "the resolved training config, and the TOML atelier train reads; or the field at fault",
      body: trainBody,
      handler: ({ body }) => {
        const b = body as { name: string; config: Record<string, unknown> };
        const config = studioConfig(ctx.root, b.name, b.config);
        return { config, toml: configToml(config) };
      },
    },
    {
      method: "POST",
      path: "/api/train",
      summary: "queue a training run (a job; resumable)",
      body: trainBody,
      handler: ({ body }) => {
        const b = body as { name: string; config: Record<string, unknown> };
        const config = studioConfig(ctx.root, b.name, b.config);
        const taken = ctx.queue
          .list(10000)
          .some((j) => j.kind === "train" && j.name === b.name && ACTIVE.has(j.status));
        if (taken || existsSync(config.output_dir)) {
          throw new HttpError(
            409,
            `body.name: a run ${JSON.stringify(b.name)} exists (runs/${b.name}); pick another name`,
            "body.name",
          );
        }
        return jobJson(ctx.enqueue("train", b.name, { config, request: b.config }));
      },
    },
    {
      method: "POST",
      path: "/api/generate",
      summary:
        "queue a txt2img (A1111 prompt syntax: <lora:NAME:w> from models/Lora, <hypernet:NAME:m> from models/hypernetworks, embeddings/ words); PNGs with A1111 parameters; with `upscaler`, each picture is then upscaled ×4 (NAME-base.png keeps the first stage's)",
      body: {
        type: "object",
        required: ["model", "prompt"],
        properties: { ...GENERATE_FIELDS, prompt: { type: "string", maxLength: 10000 } },
      },
      handler: ({ body }) => {
        const b = body as GenerateBody;
        return jobJson(ctx.enqueue("generate", b.model, generateParams(ctx.root, b)));
      },
    },
    {
      method: "GET",
      path: "/api/jobs",
      summary: "the queue, newest first",
      handler: () => ctx.queue.list().map(jobJson),
    },
    {
      method: "GET",
      path: "/api/jobs/{id}",
      summary: "one job with its losses, samples, artifacts and log",
      params: { id: jobId },
      handler: ({ params }) => {
        const job = findJob(ctx, params.id);
        const events = ctx.queue.events(job.id);
        const of = (t: string) => events.filter((e) => e.type === t).map((e) => e.data);
        return {
          ...jobJson(job),
          losses: of("step"),
          samples: of("sample"),
          artifacts: of("artifact"),
          log: of("log").slice(-300),
          last_seq: events.at(-1)?.seq ?? 0,
        };
      },
    },
    ...(["pause", "resume", "cancel"] as const).map(
      (action): Route => ({
        method: "POST",
        path: `/api/jobs/{id}/${action}`,
        summary:
          action === "pause"
            ? "pause a training job (it saves a resumable state)"
            : action === "resume"
              ? "queue a paused (or failed) job again, from its last state"
              : "cancel a job",
        params: { id: jobId },
        handler: ({ params }) => {
          const job = findJob(ctx, params.id);
          const allowed =
            action === "pause"
              ? job.kind === "train" && (job.status === "running" || job.status === "queued")
              : action === "resume"
                ? job.status === "paused" || (job.kind === "train" && job.status === "failed")
                : ACTIVE.has(job.status);
          if (!allowed)
            throw new HttpError(409, `cannot ${action} job ${job.id}: it is a ${job.kind} job, ${job.status}`);
          ctx.runner[action](job.id);
          return jobJson(ctx.queue.get(job.id)!);
        },
      }),
    ),
    {
      method: "GET",
      path: "/api/jobs/{id}/events",
      summary: "the job's events as server-sent events (after ?after=SEQ or Last-Event-ID), then live",
      params: { id: jobId },
      query: { after: { type: "integer", minimum: 0 } },
      stream: true,
      handler: ({ params, query, req, res }) => {
        const job = findJob(ctx, params.id);
        const after = Number(query.get("after") ?? req.headers["last-event-id"] ?? 0) || 0;
        res.writeHead(200, {
          "Content-Type": "text/event-stream",
          "Cache-Control": "no-store",
          Connection: "keep-alive",
          "X-Content-Type-Options": "nosniff",
        });
        const write = (e: { seq?: number; type: string; data: unknown }) =>
          res.write(`${e.seq ? `id: ${e.seq}\n` : ""}event: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`);
        write({ type: "job", data: jobJson(job) });
        for (const e of ctx.queue.events(job.id, after)) write(e);
        const off = ctx.runner.on((id, e) => {
          if (id !== job.id) return;
          if (e.type === "job" && "job" in e) write({ type: "job", data: jobJson(e.job) });
          else write(e as { seq: number; type: string; data: unknown });
        });
        const ping = setInterval(() => res.write(": ping\n\n"), 15000);
        req.on("close", () => {
          off();
          clearInterval(ping);
        });
      },
    },
  ];
}
