// A1111's Checkpoint Merger (AUTOMATIC1111/stable-diffusion-webui
// modules/extras.py run_modelmerger) as one streaming pass over single-file
// checkpoints: weighted sum A·(1−M) + B·M, add difference A + (B − C)·M, or
// no interpolation; only keys with "model" in them that B has are merged,
// the rest is A's; an inpainting A merges its first 4 input channels with a
// normal B; a VAE can be baked in (sd_vae.py load_vae_dict: its keys go
// under first_stage_model.). Every tensor is read, combined and written one
// at a time, so neither model is ever held whole.
import { extname } from "node:path";
import { cat, type DType, isFloating, scope, type Tensor } from "../engine/index.js";
import { keyMapFor, loadCheckpoint } from "../formats/checkpoint.js";
import { openSource, type Source } from "../formats/checkpoint-source.js";
import { toLdmTensor } from "../formats/keymaps/index.js";
import { writeSafetensorsStream } from "./stream-safetensors.js";
import { checkOutputPath, LoraToolError } from "./tool-io.js";

export type MergeMode = "weighted_sum" | "add_difference" | "none";

export interface CheckpointMergeOptions {
  mode: MergeMode;
  /** A's second model. */
  b?: string;
  /** The model subtracted from B (add difference). */
  c?: string;
  /** M, 0…1 for a weighted sum. */
  multiplier?: number;
  /** A VAE file (single-file VAE names, with or without first_stage_model., or a diffusers VAE) to bake in. */
  bakeVae?: string;
  dtype?: DType;
  overwrite?: boolean;
}

export interface CheckpointMergeResult {
  merged: number;
  copied: number;
  vaeBaked: number;
  inpainting: boolean;
}

// A1111 modules/sd_models.py checkpoint_dict_skip_on_merge
const SKIP_ON_MERGE = new Set(["cond_stage_model.transformer.text_model.embeddings.position_ids"]);
const VAE_PREFIX = "first_stage_model.";

function probe(path: string, what: string) {
  if (extname(path).toLowerCase() === "")
    throw new LoraToolError(
      `${what} ${path}: the checkpoint merger reads single-file checkpoints (.safetensors/.ckpt); convert a diffusers folder first`,
    );
  return loadCheckpoint(path, { components: [] }).info;
}

/** The VAE's tensors under single-file names (`first_stage_model.` + LDM key). */
function vaeSource(
  path: string,
  aConfigs: ReturnType<typeof probe>["configs"],
): { get(k: string): Tensor | undefined; keys: Set<string>; close(): void } {
  const src = openSource(path);
  const keys = src.keys().filter((k) => !k.startsWith("loss"));
  const diffusers = keys.some((k) => k.startsWith("encoder.down_blocks.") || k.startsWith("decoder.up_blocks."));
  const names = new Map<string, () => Tensor>();
  if (diffusers) {
    const map = keyMapFor("vae", aConfigs);
    for (const e of map.entries) {
      if (!e.diffusers.every((d) => src.has(d))) continue;
      names.set(e.ldm, () =>
        scope(() =>
          toLdmTensor(
            e,
            e.diffusers.map((d) => src.get(d)),
          ).contiguous(),
        ),
      );
    }
  } else {
    for (const k of keys) {
      const ldm = k.startsWith(VAE_PREFIX) ? k : `${VAE_PREFIX}${k}`;
      names.set(ldm, () => src.get(k));
    }
  }
  return {
    keys: new Set(names.keys()),
    get: (k) => names.get(k)?.(),
    close: () => src.close(),
  };
}

export function mergeCheckpoints(a: string, output: string, o: CheckpointMergeOptions): CheckpointMergeResult {
  const m = o.multiplier ?? 0.5;
  if (!["weighted_sum", "add_difference", "none"].includes(o.mode))
    throw new LoraToolError(`merge mode ${JSON.stringify(o.mode)}: use weighted_sum, add_difference or none`);
  if (o.mode !== "none" && !o.b) throw new LoraToolError(`${o.mode} needs a model B`);
  if (o.mode === "add_difference" && !o.c) throw new LoraToolError("add_difference needs a model C (B − C is added)");
  if (!Number.isFinite(m)) throw new LoraToolError(`multiplier ${m} is not a number`);
  if (o.mode === "none" && !o.bakeVae && !o.dtype)
    throw new LoraToolError("nothing to do: no model B, no VAE to bake, no precision");
  const inputs = [a, o.b, o.mode === "add_difference" ? o.c : undefined, o.bakeVae].filter((x): x is string => !!x);
  checkOutputPath(output, inputs, { layout: "ldm", overwrite: o.overwrite });
  const infoA = probe(a, "A");
  const infos = [o.b, o.mode === "add_difference" ? o.c : undefined].map((p, i) => (p ? probe(p, "BC"[i]) : undefined));
  for (const [i, info] of infos.entries())
    if (info && info.version !== infoA.version)
      throw new LoraToolError(
        `A ${a} is ${infoA.version} and ${"BC"[i]} ${info.path} is ${info.version}: merge models of one base`,
      );
  const sources: Source[] = [];
  const vae = o.bakeVae ? vaeSource(o.bakeVae, infoA.configs) : undefined;
  try {
    const A = openSource(a);
    sources.push(A);
    const B = o.mode !== "none" ? openSource(o.b!) : undefined;
    if (B) sources.push(B);
    const C = o.mode === "add_difference" ? openSource(o.c!) : undefined;
    if (C) sources.push(C);
    const keys = A.keys();
    let inpainting = false;
    const plan = new Map<string, "merge" | "inpaint" | "copy" | "vae">();
    for (const k of keys) {
      if (vae && k.startsWith(VAE_PREFIX)) {
        if (!vae.keys.has(k))
          throw new LoraToolError(
            `${o.bakeVae}: the VAE lacks ${k.slice(VAE_PREFIX.length)} (not a VAE of this model?)`,
          );
        const sv = vae.get(k)!;
        const same = sv.shape.join() === A.info(k).shape.join();
        sv.dispose();
        if (!same) throw new LoraToolError(`${o.bakeVae}: ${k} has another shape than A's (not a VAE of this model?)`);
        plan.set(k, "vae");
        continue;
      }
      // A1111: B − C is zero where C lacks the key, so add difference leaves it as A's
      const skip = !B || !k.includes("model") || !B.has(k) || (C !== undefined && !C.has(k));
      if (skip || SKIP_ON_MERGE.has(k) || !isFloating(A.info(k).dtype)) {
        plan.set(k, "copy");
        continue;
      }
      const sa = A.info(k).shape;
      const sb = B.info(k).shape;
      if (C && C.info(k).shape.join() !== sb.join())
        throw new LoraToolError(
          `${k}: B is [${sb}] and C is [${C.info(k).shape}]: B and C must be the same architecture`,
        );
      if (sa.join() === sb.join()) plan.set(k, "merge");
      else if (
        sa.length === 4 &&
        sb.length === 4 &&
        sa[0] === sb[0] &&
        sa[2] === sb[2] &&
        sa[3] === sb[3] &&
        sa[1] === 9 &&
        sb[1] === 4
      ) {
        plan.set(k, "inpaint");
        inpainting = true;
      } else if (sa[1] === 4 && sb[1] === 9)
        throw new LoraToolError("when merging an inpainting model with a normal one, A must be the inpainting model");
      else throw new LoraToolError(`${k}: A is [${sa}], B is [${sb}]: the checkpoints are different architectures`);
    }
    const counts = { merge: 0, copy: 0, vae: 0 };
    const planned = keys.map((k) => {
      const i = A.info(k);
      return { name: k, shape: i.shape, dtype: o.dtype && isFloating(i.dtype) ? o.dtype : i.dtype };
    });
    const dtypes = new Map(planned.map((p) => [p.name, p.dtype]));
    const combine = (x: Tensor, y: Tensor, z: Tensor | undefined): Tensor =>
      o.mode === "weighted_sum" ? x.mul(1 - m).add(y, m) : x.add(z ? y.sub(z) : y, m);
    writeSafetensorsStream(
      output,
      planned,
      {
        format: "pt",
        atelier_checkpoint_merge: JSON.stringify({ mode: o.mode, multiplier: m, a, b: o.b, c: o.c, vae: o.bakeVae }),
      },
      (k) => {
        const want = dtypes.get(k)!;
        const step = plan.get(k)!;
        if (step === "vae") {
          counts.vae++;
          return vae!.get(k)!.to(want);
        }
        const x = A.get(k);
        if (step === "copy") {
          counts.copy++;
          return x.to(want);
        }
        counts.merge++;
        const compute = x.dtype === "float64" ? "float64" : "float32";
        const y = B!.get(k, { dtype: compute });
        const z = C ? C.get(k, { dtype: compute }) : undefined;
        const xa = x.to(compute);
        if (step === "merge") return combine(xa, y, z).to(want);
        // inpainting A: its first 4 input channels are merged, the mask and masked-image channels kept
        const head = combine(xa.narrow(1, 0, 4), y, z);
        return cat([head, xa.narrow(1, 4, xa.size(1) - 4)], 1).to(want);
      },
    );
    return { merged: counts.merge, copied: counts.copy, vaeBaked: counts.vae, inpainting };
  } finally {
    for (const s of sources) s.close();
    vae?.close();
  }
}
