// <lora:NAME:te:unet> in a prompt (AUTOMATIC1111 extensions-builtin/Lora/
// extra_networks_lora.py, networks.py): the named files are looked up in
// LoRA folders (A1111's models/Lora, --lora-dir) and attached in bypass
// mode with their text-encoder and UNet multipliers; several add up. The
// prompt parsing itself is infer/prompt-parser.ts extractNetworks().
import { existsSync, readdirSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { type LoraNetwork, loadLora } from "./network.js";
import type { LoraModelParts } from "./targets.js";

/** One parsed <kind:name:…> tag (infer/prompt-parser.ts ExtraNetwork fits). */
export interface PromptNetwork {
  kind: string;
  name: string;
  /** Text-encoder multiplier. */
  multiplier: number;
  unetMultiplier: number;
}

/** The file extensions a LoRA name may have, in the order they are tried. */
export const LORA_EXTENSIONS = [".safetensors", ".pt", ".ckpt", ".bin"] as const;

/** Tag kinds that name a LoRA (A1111 also reads <lyco:…> as LoRA since 1.5). */
const LORA_KINDS = new Set(["lora", "lyco"]);

function filesBelow(dir: string, depth = 0): string[] {
  if (depth > 8) return [];
  const out: string[] = [];
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e);
    try {
      if (statSync(p).isDirectory()) out.push(...filesBelow(p, depth + 1));
      else out.push(p);
    } catch {
      // vanished or unreadable: skip
    }
  }
  return out;
}

/**
 * The file of a LoRA name: DIR/NAME.safetensors (.pt, .ckpt, .bin) in each
 * folder in turn, then the same file name in a subfolder (A1111 lists the
 * whole tree). A name that is found nowhere is an error listing the folders.
 */
export function findLoraFile(name: string, dirs: readonly string[]): string {
  // a name stays inside the LoRA folders: no absolute paths, no ".." (the server passes prompts through)
  if (name === "" || name.includes("\0") || isAbsolute(name) || name.split(/[\\/]/).includes(".."))
    throw new Error(`invalid LoRA name '${name}'`);
  for (const dir of dirs)
    for (const ext of LORA_EXTENSIONS) {
      const p = join(dir, `${name}${ext}`);
      if (existsSync(p) && statSync(p).isFile()) return p;
    }
  for (const dir of dirs) {
    const files = filesBelow(dir);
    for (const ext of LORA_EXTENSIONS) {
      const hit = files.find((f) => f.endsWith(`/${name}${ext}`));
      if (hit) return hit;
    }
  }
  const where = dirs.length
    ? `looked for ${name}{${LORA_EXTENSIONS.join(",")}} in ${dirs.join(", ")} and their subfolders`
    : "no LoRA folder was given";
  throw new Error(`LoRA '${name}' not found: ${where}`);
}

/** LoRAs attached for a prompt; remove() puts the model back as it was. */
export interface AppliedLoras {
  networks: LoraNetwork[];
  remove(): void;
}

/**
 * Attaches the LoRA of every <lora:…>/<lyco:…> tag. Other tag kinds are
 * refused by name. On any failure nothing stays attached.
 */
export function applyLoraTags(
  model: LoraModelParts,
  tags: readonly PromptNetwork[],
  o: { loraDirs: readonly string[] },
): AppliedLoras {
  const networks: LoraNetwork[] = [];
  const remove = () => {
    for (const n of networks.splice(0).reverse()) n.remove();
  };
  try {
    for (const tag of tags) {
      if (!LORA_KINDS.has(tag.kind))
        throw new Error(`<${tag.kind}:${tag.name}>: only <lora:…> (and <lyco:…>) extra networks are supported`);
      const path = findLoraFile(tag.name, o.loraDirs);
      networks.push(loadLora(model, path, { multiplier: tag.multiplier, unetMultiplier: tag.unetMultiplier }));
    }
  } catch (e) {
    remove();
    throw e;
  }
  return { networks, remove };
}
