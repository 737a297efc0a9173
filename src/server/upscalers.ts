// The ×4 upscalers a studio generation may end with (issue 13's two-stage
// generation): the workspace's models/upscalers/NAME folders and the
// built-in shapes upscaler, by name. A request's name and noise level are
// checked here, against the folder's model_index.json, before anything is
// queued; the pairing with the base model (the same text encoder family, the
// picture size) is checked by the library before the first step.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { shapesUpscalerPath } from "../index.js";
import { HttpError } from "./validate.js";
import { LAYOUT, listFolders } from "./workspace-files.js";

/** The built-in one's name in requests and lists. */
export const BUILTIN_UPSCALER = "builtin:shapes-upscaler";

function indexOf(dir: string): Record<string, unknown> | null {
  try {
    const index = JSON.parse(readFileSync(join(dir, "model_index.json"), "utf8"));
    return index._class_name === "StableDiffusionUpscalePipeline" ? index : null;
  } catch {
    return null;
  }
}

/** The names a request may give: the built-in upscaler (when shipped) and the workspace's upscaler folders. */
export function listUpscalers(root: string): string[] {
  const own = listFolders(root, "upscalers").filter((n) => indexOf(join(root, LAYOUT.upscalers, n)) !== null);
  return [...(existsSync(shapesUpscalerPath()) ? [BUILTIN_UPSCALER] : []), ...own];
}

/** A request's upscaler as an absolute folder, its noise level checked against the folder's max_noise_level. */
export function resolveUpscaler(root: string, name: string, noiseLevel: number | undefined): string {
  const dir = name === BUILTIN_UPSCALER ? shapesUpscalerPath() : join(root, LAYOUT.upscalers, name);
  const index = /^[\w.-]+$/.test(name) || name === BUILTIN_UPSCALER ? indexOf(dir) : null;
  if (!index)
    throw new HttpError(
      400,
      `body.upscaler: no upscaler '${name}' (${LAYOUT.upscalers}/NAME holds diffusers StableDiffusionUpscalePipeline folders; known: ${listUpscalers(root).join(", ") || "none"})`,
      "body.upscaler",
    );
  const max = typeof index.max_noise_level === "number" ? index.max_noise_level : 350;
  if (noiseLevel !== undefined && noiseLevel > max)
    throw new HttpError(
      400,
      `body.noise_level: ${noiseLevel} is above ${name}'s max_noise_level ${max}`,
      "body.noise_level",
    );
  return dir;
}
