// The studio's workspace, laid out as AUTOMATIC1111 users know it
// (stable-diffusion-webui: models/Stable-diffusion, models/Lora, embeddings,
// models/hypernetworks), plus datasets/, runs/ and outputs/; working models
// (create-model) live in models/atelier/. Every path the API takes goes
// through `confine`: relative, no `..`, and — once symlinks are resolved —
// inside the workspace.
import { existsSync, lstatSync, mkdirSync, readdirSync, realpathSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { HttpError } from "./validate.js";

export const LAYOUT = {
  checkpoints: "models/Stable-diffusion",
  lora: "models/Lora",
  embeddings: "embeddings",
  hypernetworks: "models/hypernetworks",
  /** ×4 latent upscalers (diffusers StableDiffusionUpscalePipeline folders), for two-stage generation. */
  upscalers: "models/upscalers",
  models: "models/atelier",
  datasets: "datasets",
  runs: "runs",
  outputs: "outputs",
} as const;
export type Area = keyof typeof LAYOUT;

/** The workspace folder, absolute and with symlinks resolved, its folders made. */
export function openWorkspace(dir: string): string {
  const root = resolve(dir);
  for (const rel of Object.values(LAYOUT)) mkdirSync(join(root, rel), { recursive: true });
  return realpathSync(root);
}

const inside = (root: string, p: string) => p === root || p.startsWith(root + sep);

/**
 * `rel` (a workspace-relative path from a request) as an absolute path inside `root`; a 400
 * naming `field` for an absolute path, a `..` segment, a NUL, or a path whose existing part is
 * a symlink leading out of the workspace. The path need not exist.
 */
export function confine(root: string, rel: string, field: string): string {
  if (typeof rel !== "string" || rel === "") throw new HttpError(400, `${field}: must be a non-empty path`, field);
  if (rel.includes("\0")) throw new HttpError(400, `${field}: a path may not hold a NUL character`, field);
  if (isAbsolute(rel) || /^[A-Za-z]:/.test(rel) || rel.startsWith("\\")) {
    throw new HttpError(
      400,
      `${field}: must be relative to the workspace, got the absolute path ${JSON.stringify(rel)}`,
      field,
    );
  }
  if (rel.split(/[/\\]/).some((part) => part === "..")) {
    throw new HttpError(400, `${field}: may not contain '..' (paths stay inside the workspace)`, field);
  }
  const abs = resolve(root, rel);
  if (!inside(root, abs)) throw new HttpError(400, `${field}: leads outside the workspace`, field);
  // The deepest part that exists, with its symlinks resolved, must still be inside.
  let probe = abs;
  while (!existsSync(probe) && probe !== root) {
    // a dangling symlink exists for lstat only: refuse it too
    try {
      lstatSync(probe);
      throw new HttpError(400, `${field}: is a symbolic link that leads nowhere`, field);
    } catch (e) {
      if (e instanceof HttpError) throw e;
    }
    probe = dirname(probe);
  }
  const real = realpathSync(probe);
  if (!inside(root, real)) {
    throw new HttpError(400, `${field}: a symbolic link in it leads outside the workspace`, field);
  }
  return abs;
}

/** The workspace-relative form of an absolute path inside it (forward slashes). */
export function relPath(root: string, abs: string): string {
  return relative(root, abs).split(sep).join("/");
}

export interface FileEntry {
  /** Workspace-relative. */
  path: string;
  name: string;
  size: number;
  modified: string;
}

/**
 * The files under an area whose names end with one of `exts` (lower case), newest first; hidden
 * files and symlinks leading out of the workspace are left out. Files dropped in by hand appear.
 */
export function listFiles(root: string, area: Area, exts: readonly string[], depth = 3): FileEntry[] {
  const out: FileEntry[] = [];
  const walk = (dir: string, level: number) => {
    let entries: import("node:fs").Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const p = join(dir, e.name);
      let real: string;
      try {
        real = realpathSync(p);
      } catch {
        continue;
      }
      if (!inside(root, real)) continue;
      const st = statSync(real);
      if (st.isDirectory()) {
        if (level < depth) walk(p, level + 1);
      } else if (st.isFile() && exts.some((x) => e.name.toLowerCase().endsWith(x))) {
        out.push({ path: relPath(root, p), name: e.name, size: st.size, modified: st.mtime.toISOString() });
      }
    }
  };
  walk(join(root, LAYOUT[area]), 1);
  return out.sort((a, b) => (a.modified < b.modified ? 1 : a.modified > b.modified ? -1 : a.path < b.path ? -1 : 1));
}

/** The folders directly in an area (datasets, runs). */
export function listFolders(root: string, area: Area): string[] {
  const dir = join(root, LAYOUT[area]);
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && !e.name.startsWith("."))
    .map((e) => e.name)
    .sort();
}
