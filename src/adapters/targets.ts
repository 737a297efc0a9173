// Which layers a LoRA wraps and what kohya calls them (kohya-ss/sd-scripts
// networks/lora.py, LoRANetwork.create_modules): every Linear and Conv2d
// inside a Transformer2DModel (UNet) or a CLIPAttention / CLIPMLP (text
// encoder); with conv LoRA ("LoCon", conv_dim) also inside ResnetBlock2D,
// Downsample2D and Upsample2D. Name: prefix + "_" + path with "." → "_".
import { Downsample2D, ResnetBlock2D, Transformer2DModel, Upsample2D } from "../models/blocks/index.js";
import { ClipAttention, ClipMlp } from "../models/clip/text-encoder.js";
import type { Module } from "../nn/index.js";
import type { AdapterTarget } from "./adapter.js";
import { normChannels, normLayer } from "./norm.js";
import { baseLayer, layerKind, weightShape } from "./wrapped-layer.js";

export const UNET_PREFIX = "lora_unet";
export const TE_PREFIX = "lora_te";

/** The networks a LoRA can adapt (a StableDiffusion fits). */
export interface LoraModelParts {
  unet?: Module;
  textEncoder?: Module;
}

export type Component = AdapterTarget["component"];

export const PREFIX: Record<Component, string> = { unet: UNET_PREFIX, textEncoder: TE_PREFIX };

/** kohya's module name for a path: `lora_unet_down_blocks_0_…_attn1_to_q`. */
export function kohyaName(prefix: string, path: string): string {
  return `${prefix}_${path.replaceAll(".", "_")}`;
}

// biome-ignore lint/suspicious/noExplicitAny: constructors of any module class
type ModuleClass = abstract new (...args: any[]) => Module;

const UNET_CONTAINERS: ModuleClass[] = [Transformer2DModel];
const UNET_CONV_CONTAINERS: ModuleClass[] = [ResnetBlock2D, Downsample2D, Upsample2D];
const TE_CONTAINERS: ModuleClass[] = [ClipAttention, ClipMlp];

function target(component: Component, path: string, m: Module): AdapterTarget | null {
  const base = baseLayer(m);
  if (!base) return normTarget(component, path, m);
  return {
    name: kohyaName(PREFIX[component], path),
    path,
    component,
    kind: layerKind(base),
    weightShape: weightShape(base),
  };
}

/** A GroupNorm / LayerNorm as a target of kind "norm" (weightShape [channels]), or null. */
function normTarget(component: Component, path: string, m: Module): AdapterTarget | null {
  const n = normLayer(m);
  if (!n) return null;
  return { name: kohyaName(PREFIX[component], path), path, component, kind: "norm", weightShape: [normChannels(n)] };
}

/** Every Linear/Conv2d inside a module of the given classes, in tree order (create_modules). */
function findTargets(root: Module, component: Component, containers: ModuleClass[], norms = false): AdapterTarget[] {
  const out: AdapterTarget[] = [];
  const seen = new Set<string>();
  for (const [path, m] of root.namedModules()) {
    if (!containers.some((c) => m instanceof c)) continue;
    for (const [sub, child] of m.namedModules()) {
      if (sub === "") continue;
      const t = target(component, path ? `${path}.${sub}` : sub, child);
      if (t && t.kind === "norm" && !norms) continue;
      if (t && !seen.has(t.name)) {
        seen.add(t.name);
        out.push(t);
      }
    }
  }
  return out;
}

export interface LoraTargetOptions {
  /** Adapt the UNet (default true). */
  unet?: boolean;
  /** Adapt the text encoder (default true). */
  textEncoder?: boolean;
  /** Also the resnets, downsamplers and upsamplers (kohya conv_dim, "LoCon"). */
  conv?: boolean;
  /** Also the GroupNorm / LayerNorm layers inside those containers (LyCORIS train_norm, kohya.py create_single_module). */
  norms?: boolean;
}

/** kohya's default targets: text encoder first, then the UNet, as LoRANetwork lists them. */
export function loraTargets(model: LoraModelParts, o: LoraTargetOptions = {}): AdapterTarget[] {
  const out: AdapterTarget[] = [];
  if ((o.textEncoder ?? true) && model.textEncoder)
    out.push(...findTargets(model.textEncoder, "textEncoder", TE_CONTAINERS, o.norms));
  if ((o.unet ?? true) && model.unet) {
    const containers = o.conv ? [...UNET_CONTAINERS, ...UNET_CONV_CONTAINERS] : UNET_CONTAINERS;
    out.push(...findTargets(model.unet, "unet", containers, o.norms));
  }
  return out;
}

/** Every Linear, Conv2d and norm layer of the model by kohya name: what a file may adapt (A1111 maps any layer too). */
export function layerIndex(model: LoraModelParts): Map<string, AdapterTarget> {
  const out = new Map<string, AdapterTarget>();
  for (const component of ["textEncoder", "unet"] as const) {
    const root = model[component];
    if (!root) continue;
    for (const [path, m] of root.namedModules()) {
      const t = path ? target(component, path, m) : null;
      if (t) out.set(t.name, t);
    }
  }
  return out;
}
