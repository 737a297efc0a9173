// <hypernet:NAME:multiplier> in a prompt (AUTOMATIC1111/stable-diffusion-webui
// modules/extra_networks_hypernet.py with
// modules/hypernetworks/hypernetwork.py `list_hypernetworks` /
// `load_hypernetworks`): NAME is the stem of a .pt anywhere under the
// hypernetworks folders (A1111's models/hypernetworks); the named files are
// loaded, given their multipliers and chained on the UNet's attentions.
import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, extname, isAbsolute, join } from "node:path";
import { applyHypernetworks, type Hypernetwork, loadHypernetwork } from "./hypernetwork.js";
import type { PromptNetwork } from "./prompt-loras.js";

export const HYPERNETWORK_TAG = "hypernet";

function ptFilesBelow(dir: string, depth = 0): string[] {
  if (depth > 8) return [];
  let entries: string[];
  try {
    entries = readdirSync(dir).sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    const p = join(dir, e);
    try {
      if (statSync(p).isDirectory()) out.push(...ptFilesBelow(p, depth + 1));
      else if (extname(e).toLowerCase() === ".pt") out.push(p);
    } catch {
      // vanished or unreadable: skip
    }
  }
  return out;
}

/** A hypernetwork folder that is not there is an error naming it (before anything runs). */
export function checkHypernetworkDirs(dirs: readonly string[]): void {
  for (const d of dirs)
    if (!existsSync(d) || !statSync(d).isDirectory()) throw new Error(`hypernetwork folder ${d} does not exist`);
}

/** The .pt whose stem is `name` in the hypernetwork folders (subfolders too); an error lists where it looked. */
export function findHypernetworkFile(name: string, dirs: readonly string[]): string {
  if (name === "" || name.includes("\0") || isAbsolute(name) || /[\\/]/.test(name))
    throw new Error(`invalid hypernetwork name '${name}'`);
  checkHypernetworkDirs(dirs);
  for (const dir of dirs) {
    const hit = ptFilesBelow(dir).find((p) => basename(p, extname(p)) === name);
    if (hit) return hit;
  }
  throw new Error(
    `hypernetwork '${name}' not found: ${dirs.length ? `looked for ${name}.pt under ${dirs.join(", ")}` : "no hypernetwork folder was given"}`,
  );
}

/** Hypernetworks attached for a prompt; remove() detaches and frees them. */
export interface AppliedHypernetworkTags {
  hypernetworks: Hypernetwork[];
  remove(): void;
}

/** Loads and attaches the hypernetwork of every <hypernet:…> tag; on any failure nothing stays attached. */
export function applyHypernetworkTags(
  unet: { namedModules(): Map<string, unknown> },
  tags: readonly PromptNetwork[],
  o: { hypernetworkDirs: readonly string[] },
): AppliedHypernetworkTags {
  const loaded: Hypernetwork[] = [];
  try {
    for (const tag of tags) {
      if (tag.kind !== HYPERNETWORK_TAG) throw new Error(`<${tag.kind}:${tag.name}> is not a hypernetwork tag`);
      const hn = loadHypernetwork(findHypernetworkFile(tag.name, o.hypernetworkDirs));
      hn.multiplier = tag.multiplier;
      loaded.push(hn);
    }
    const applied = applyHypernetworks(unet, loaded);
    return {
      hypernetworks: loaded,
      remove() {
        applied.remove();
        for (const h of loaded.splice(0)) h.dispose();
      },
    };
  } catch (e) {
    for (const h of loaded) h.dispose();
    throw e;
  }
}
