// The workspace's endpoints: models (list, inspect, create from a source
// checkpoint), datasets (folders of pictures, uploads checked as images,
// captions), the library (LoRAs, embeddings, hypernetworks with their
// metadata), lab reports and images by workspace path. Each handler checks
// its inputs, then calls the library.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { basename, extname, join } from "node:path";
import {
  checkModelName,
  decodeImage,
  IMAGE_EXTENSIONS,
  listModels,
  openModel,
  readPngText,
  SAMPLER_NAMES,
  safetensors,
  shapesBasePath,
  WorkspaceError,
} from "../index.js";
import { jobJson } from "./api-jobs.js";
import type { Route } from "./http.js";
import { sendFile } from "./http.js";
import type { StudioContext } from "./studio.js";
import { listUpscalers } from "./upscalers.js";
import { check, HttpError, type JsonSchema, nameSchema } from "./validate.js";
import { type Area, confine, LAYOUT, listFiles, listFolders, relPath } from "./workspace-files.js";

/** The built-in source checkpoint: the shapes world's base model shipped with Atelier. */
export const BUILTIN_SHAPES_BASE = "builtin:shapes-base";
const WEIGHT_EXTS = [".safetensors", ".ckpt", ".pt", ".bin"];
const IMAGE_EXTS = [...IMAGE_EXTENSIONS];
/** Images served by /api/file: those the studio and the trainer write, in these areas. */
const SERVED_AREAS: Area[] = ["datasets", "runs", "outputs"];

const modelName = nameSchema("a workspace model (models/atelier/NAME)");
const datasetName = nameSchema("a dataset folder (datasets/NAME)");
const fileName: JsonSchema = {
  type: "string",
  pattern: "^[A-Za-z0-9][A-Za-z0-9 ._-]{0,120}$",
  description: "a file name (no folders)",
};

function modelJson(m: ReturnType<typeof openModel>, root: string) {
  return { ...m.meta, dir: relPath(root, m.dir) };
}

function safetensorsMeta(file: string): { metadata: Record<string, string>; tensors: number } | { problem: string } {
  try {
    const h = safetensors.inspectSafetensors(file);
    const metadata = Object.fromEntries(
      Object.entries(h.metadata).filter(([k]) => !/^ss_(tag_frequency|dataset_dirs|bucket_info)$/.test(k)),
    );
    return { metadata, tensors: h.tensors.size };
  } catch (e) {
    return { problem: (e as Error).message };
  }
}

function datasetImages(ctx: StudioContext, name: string) {
  const dir = confine(ctx.root, `${LAYOUT.datasets}/${name}`, "path.name");
  if (!existsSync(dir)) throw new HttpError(404, `no dataset ${JSON.stringify(name)} (datasets/${name})`);
  return readdirSync(dir)
    .filter((f) => !f.startsWith(".") && IMAGE_EXTENSIONS.has(extname(f).toLowerCase()))
    .sort()
    .map((file) => {
      const captionFile = join(dir, `${basename(file, extname(file))}.txt`);
      return {
        file,
        path: relPath(ctx.root, join(dir, file)),
        caption: existsSync(captionFile) ? readFileSync(captionFile, "utf8").trim() : null,
      };
    });
}

export function workspaceRoutes(ctx: StudioContext): Route[] {
  const modelsDir = join(ctx.root, LAYOUT.models);
  return [
    {
      method: "GET",
      path: "/api/workspace",
      summary: "the workspace's folders (A1111 layout) and what is in them",
      handler: () => ({
        root: ctx.root,
        layout: LAYOUT,
        checkpoints: listFiles(ctx.root, "checkpoints", WEIGHT_EXTS),
        lora: listFiles(ctx.root, "lora", [".safetensors", ".pt"]),
        embeddings: listFiles(ctx.root, "embeddings", [".safetensors", ".pt", ".bin"]),
        hypernetworks: listFiles(ctx.root, "hypernetworks", [".pt", ".safetensors"]),
        upscalers: listUpscalers(ctx.root),
        datasets: listFolders(ctx.root, "datasets"),
        runs: listFolders(ctx.root, "runs"),
        samplers: SAMPLER_NAMES,
      }),
    },
    {
      method: "GET",
      path: "/api/sources",
      summary: "checkpoints a model can be created from: the built-in shapes base and models/Stable-diffusion",
      handler: () => [
        { source: BUILTIN_SHAPES_BASE, label: "shapes-base (built in)" },
        ...listFiles(ctx.root, "checkpoints", WEIGHT_EXTS).map((f) => ({ source: f.path, label: f.path })),
        // diffusers folders dropped into models/Stable-diffusion
        ...listFolders(ctx.root, "checkpoints")
          .filter((d) => existsSync(join(ctx.root, LAYOUT.checkpoints, d, "model_index.json")))
          .map((d) => ({ source: `${LAYOUT.checkpoints}/${d}`, label: `${LAYOUT.checkpoints}/${d}` })),
      ],
    },
    {
      method: "GET",
      path: "/api/models",
      summary: "the workspace's models (models/atelier), and a line for each unreadable one",
      handler: () => {
        const { models, problems } = listModels(modelsDir);
        return { models: models.map((m) => modelJson(m, ctx.root)), problems };
      },
    },
    {
      method: "GET",
      path: "/api/models/{name}",
      summary: "one model's model.json",
      params: { name: modelName },
      handler: ({ params }) => {
        try {
          return modelJson(openModel(params.name, modelsDir), ctx.root);
        } catch (e) {
          if (e instanceof WorkspaceError) throw new HttpError(404, e.message);
          throw e;
        }
      },
    },
    {
      method: "POST",
      path: "/api/models",
      summary: "create a model from a source checkpoint with a chosen scheduler (a job)",
      body: {
        type: "object",
        required: ["name", "source"],
        properties: {
          name: modelName,
          source: { type: "string", minLength: 1, description: `${BUILTIN_SHAPES_BASE}, or a workspace path` },
          scheduler: { type: "string", enum: SAMPLER_NAMES, description: "the model's scheduler (default ddim)" },
          overwrite: { type: "boolean", description: "replace a model of that name" },
        },
      },
      handler: ({ body }) => {
        const b = body as { name: string; source: string; scheduler?: string; overwrite?: boolean };
        try {
          checkModelName(b.name);
        } catch (e) {
          throw new HttpError(400, `body.name: ${(e as Error).message}`, "body.name");
        }
        const from = b.source === BUILTIN_SHAPES_BASE ? shapesBasePath() : confine(ctx.root, b.source, "body.source");
        if (!existsSync(from))
          throw new HttpError(400, `body.source: no such file or folder (${b.source})`, "body.source");
        if (existsSync(join(modelsDir, b.name)) && !b.overwrite) {
          throw new HttpError(
            409,
            `body.name: a model ${JSON.stringify(b.name)} exists; set overwrite to replace it`,
            "body.name",
          );
        }
        return jobJson(
          ctx.enqueue("create-model", b.name, {
            worker: {
              kind: "create-model",
              name: b.name,
              from,
              modelsDir,
              scheduler: b.scheduler ?? "ddim",
              overwrite: b.overwrite === true,
            },
          }),
        );
      },
    },
    {
      method: "GET",
      path: "/api/datasets",
      summary: "the dataset folders with their image counts",
      handler: () =>
        listFolders(ctx.root, "datasets").map((name) => ({ name, images: datasetImages(ctx, name).length })),
    },
    {
      method: "POST",
      path: "/api/datasets",
      summary: "make a dataset folder",
      body: { type: "object", required: ["name"], properties: { name: datasetName } },
      handler: ({ body }) => {
        const { name } = body as { name: string };
        mkdirSync(confine(ctx.root, `${LAYOUT.datasets}/${name}`, "body.name"), { recursive: true });
        return { name, path: `${LAYOUT.datasets}/${name}` };
      },
    },
    {
      method: "GET",
      path: "/api/datasets/{name}",
      summary: "a dataset's images and captions",
      params: { name: datasetName },
      handler: ({ params }) => ({ name: params.name, images: datasetImages(ctx, params.name) }),
    },
    {
      method: "PUT",
      path: "/api/datasets/{name}/images/{file}",
      summary: "upload a picture (the body is the file; checked as an image, size-limited)",
      params: { name: datasetName, file: fileName },
      rawLimit: ctx.maxUpload,
      handler: async ({ params, raw }) => {
        const ext = extname(params.file).toLowerCase();
        if (!IMAGE_EXTENSIONS.has(ext)) {
          throw new HttpError(400, `path.file: not an image name (${IMAGE_EXTS.join(", ")})`, "path.file");
        }
        const dir = confine(ctx.root, `${LAYOUT.datasets}/${params.name}`, "path.name");
        if (!existsSync(dir)) throw new HttpError(404, `no dataset ${JSON.stringify(params.name)}`);
        const dest = confine(ctx.root, `${LAYOUT.datasets}/${params.name}/${params.file}`, "path.file");
        if (!raw || raw.length === 0) throw new HttpError(400, "body: the upload is empty", "body");
        let size: { width: number; height: number };
        try {
          size = await decodeImage(raw, params.file);
        } catch (e) {
          throw new HttpError(415, `body: not a readable image (${(e as Error).message})`, "body");
        }
        const tmp = join(dir, `.${params.file}.upload-${process.pid}`);
        writeFileSync(tmp, raw);
        renameSync(tmp, dest);
        return { path: relPath(ctx.root, dest), width: size.width, height: size.height, bytes: raw.length };
      },
    },
    {
      method: "PUT",
      path: "/api/datasets/{name}/captions/{file}",
      summary: "set the caption of a picture (the .txt file beside it)",
      params: { name: datasetName, file: fileName },
      body: { type: "object", required: ["text"], properties: { text: { type: "string", maxLength: 10000 } } },
      handler: ({ params, body }) => {
        const img = confine(ctx.root, `${LAYOUT.datasets}/${params.name}/${params.file}`, "path.file");
        if (!existsSync(img)) throw new HttpError(404, `no picture ${params.file} in datasets/${params.name}`);
        const txt = join(img, "..", `${basename(img, extname(img))}.txt`);
        writeFileSync(txt, `${(body as { text: string }).text}\n`);
        return { path: relPath(ctx.root, txt) };
      },
    },
    {
      method: "GET",
      path: "/api/library",
      summary: "every LoRA, embedding and hypernetwork with its metadata (what it was trained on)",
      handler: () => {
        const entries = (area: Area, exts: string[]) =>
          listFiles(ctx.root, area, exts).map((f) => ({
            ...f,
            ...(f.name.endsWith(".safetensors") ? safetensorsMeta(join(ctx.root, f.path)) : {}),
          }));
        return {
          lora: entries("lora", [".safetensors", ".pt"]),
          embeddings: entries("embeddings", [".safetensors", ".pt", ".bin"]),
          hypernetworks: entries("hypernetworks", [".pt", ".safetensors"]),
        };
      },
    },
    {
      method: "GET",
      path: "/api/outputs",
      summary: "generated pictures, newest first, with their PNG parameters",
      handler: () =>
        listFiles(ctx.root, "outputs", [".png"]).map((f) => {
          let parameters: string | null = null;
          try {
            parameters = readPngText(readFileSync(join(ctx.root, f.path))).parameters ?? null;
          } catch {
            parameters = null;
          }
          return { ...f, parameters };
        }),
    },
    {
      method: "GET",
      path: "/api/lab",
      summary: "lab and evaluation reports (outputs/ and runs/: report.html, eval .json)",
      handler: () => [
        ...listFiles(ctx.root, "outputs", [".html", "eval.json"]),
        ...listFiles(ctx.root, "runs", [".html", "eval.json"], 2),
      ],
    },
    {
      method: "GET",
      path: "/api/lab/report",
      summary:
        "a report.html (eval table, loss charts, sample grids) under outputs/ or runs/, served sandboxed: no scripts, only data: images",
      query: { path: { type: "string", minLength: 1, description: "workspace-relative, ending in report.html" } },
      stream: true,
      handler: ({ query, res }) => {
        const rel = query.get("path");
        if (rel === null) throw new HttpError(400, "query.path: is required", "query.path");
        const abs = confine(ctx.root, rel, "query.path");
        if (!(["runs", "outputs"] as const).some((a) => rel.startsWith(`${LAYOUT[a]}/`)) || !rel.endsWith(".html")) {
          throw new HttpError(400, "query.path: only .html reports under outputs/ and runs/ are served", "query.path");
        }
        if (!existsSync(abs) || !statSync(abs).isFile()) throw new HttpError(404, `no file ${rel}`);
        // the report is self-contained (src/report/html.ts); the sandbox keeps it from running anything
        sendFile(res, abs, {
          "Cache-Control": "no-cache",
          "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
        });
      },
    },
    {
      method: "GET",
      path: "/api/file",
      summary: "an image under datasets/, runs/ or outputs/ (nothing else is served)",
      query: { path: { type: "string", minLength: 1, description: "workspace-relative" } },
      stream: true,
      handler: ({ query, res }) => {
        const rel = query.get("path");
        if (rel === null) throw new HttpError(400, "query.path: is required", "query.path");
        const abs = confine(ctx.root, rel, "query.path");
        check({ type: "string" }, rel, "query.path");
        if (!SERVED_AREAS.some((a) => rel.startsWith(`${LAYOUT[a]}/`))) {
          throw new HttpError(
            400,
            `query.path: only images under ${SERVED_AREAS.map((a) => `${LAYOUT[a]}/`).join(", ")} are served`,
            "query.path",
          );
        }
        if (!IMAGE_EXTENSIONS.has(extname(abs).toLowerCase()))
          throw new HttpError(400, "query.path: not an image file", "query.path");
        if (!existsSync(abs) || !statSync(abs).isFile()) throw new HttpError(404, `no file ${rel}`);
        sendFile(res, abs, { "Cache-Control": "no-cache" });
      },
    },
  ];
}
