// What the studio tests share: a workspace in a temporary folder, pictures of
// the shapes world's subject, JSON calls, and waiting for a job.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { generateSubject, writeSceneFolder } from "../../src/shapes/world.js";
import { tempDir } from "../helpers.js";

/** A temporary folder holding `workspace/` (empty) and `outside/` (must stay empty). */
export function studioDirs(prefix: string): { root: string; workspace: string; outside: string } {
  const root = tempDir(prefix);
  const workspace = join(root, "workspace");
  const outside = join(root, "outside");
  mkdirSync(workspace);
  mkdirSync(outside);
  return { root, workspace, outside };
}

/** `n` pictures (64×64 PNG) of the shapes world's subject, in `dir`; their paths. */
export function subjectPictures(dir: string, n = 3): string[] {
  return writeSceneFolder(dir, generateSubject(7, n), {}, { seed: 7, kind: "subject" }).map((e) => e.image);
}

/** One workers' environment for the tests: one intra-op thread (the CI machine has two cores). */
export const gentleEnv = (): NodeJS.ProcessEnv => ({ ...process.env, ATELIER_NUM_THREADS: "1" });

export interface Reply {
  status: number;
  body: Record<string, unknown> & { error?: string; field?: string };
}

/** A JSON request to the studio at `base`. */
export async function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const res = await fetch(new URL(path, base), {
    method,
    headers: { ...(body !== undefined ? { "Content-Type": "application/json" } : {}), ...headers },
    body:
      body === undefined
        ? undefined
        : typeof body === "string" || body instanceof Uint8Array
          ? (body as string)
          : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: Reply["body"];
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = { text } as Reply["body"];
  }
  return { status: res.status, body: parsed };
}

/** Polls a job until it ends (or `until` says stop); its last state. */
export async function waitJob(
  base: string,
  id: number,
  o: { timeoutMs?: number; until?: (job: Record<string, unknown>) => boolean } = {},
): Promise<Record<string, unknown>> {
  const deadline = Date.now() + (o.timeoutMs ?? 120_000);
  for (;;) {
    const r = await call(base, "GET", `/api/jobs/${id}`);
    const status = r.body.status as string;
    if (o.until ? o.until(r.body) : ["done", "failed", "cancelled"].includes(status)) return r.body;
    if (Date.now() > deadline) throw new Error(`job ${id} is still ${status} after ${o.timeoutMs ?? 120_000} ms`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

/** A tiny LoRA run on a workspace model: `steps` steps at 64 px, a state every `every` steps. */
export function tinyLora(model: string, dataset: string, steps: number, every: number): Record<string, unknown> {
  return {
    model,
    method: "dreambooth",
    use_lora: true,
    lora: { rank: 2 },
    max_steps: steps,
    resolution: 64,
    learning_rate: 1e-3,
    seed: 5,
    train_text_encoder: false,
    save: { every_n_steps: every, formats: ["lora"] },
    sample: { every_n_steps: every, steps: 3, prompts: ["a sks star"] },
    concepts: [{ instance_data_dir: `datasets/${dataset}`, instance_prompt: "a sks star" }],
  };
}

/** Creates the workspace model `name` from the built-in shapes base with `scheduler`, waiting for its job. */
export async function createShapesModel(base: string, scheduler: string, name = "shapes"): Promise<void> {
  const m = await call(base, "POST", "/api/models", { name, source: "builtin:shapes-base", scheduler });
  assert.equal(m.status, 200, JSON.stringify(m.body));
  assert.equal((await waitJob(base, m.body.id as number)).status, "done");
}
