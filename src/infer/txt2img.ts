// Text to image, as diffusers' StableDiffusionPipeline does it: the initial
// noise drawn on the CPU from torch.Generator("cpu").manual_seed(seed) with
// the latent's shape (so the same seed gives the same image), scaled by the
// sampler's init sigma; classifier-free guidance over [uncond, cond]; the
// sampler's steps; the VAE decode. Prompts are encoded the A1111 way
// (emphasis, BREAK, 75-token chunks, clip skip): src/infer/prompt-encoding.ts.
import type { EmbeddingLookup } from "../adapters/embeddings.js";
import { applyHypernetworkTags, HYPERNETWORK_TAG } from "../adapters/prompt-hypernetworks.js";
import { type AppliedLoras, applyLoraTags } from "../adapters/prompt-loras.js";
import { cat, Generator, keep, noGrad, randn, round, scope, type Tensor } from "../engine/index.js";
import type { StableDiffusion } from "../models/stable-diffusion.js";
import type { AutoencoderKL } from "../models/vae/vae.js";
import { createSampler } from "../schedulers/index.js";
import { encodePrompts } from "./prompt-encoding.js";
import { extractNetworks } from "./prompt-parser.js";

export type { StableDiffusion };

export interface Txt2ImgOptions {
  prompt: string;
  negative?: string;
  sampler?: string;
  steps?: number;
  cfg?: number;
  seed?: number;
  width?: number;
  height?: number;
  batch?: number;
  clipSkip?: number;
  /**
   * Folders holding LoRA files (A1111's models/Lora). When given, the
   * prompts' <lora:NAME:te:unet> tags are taken out of the text and those
   * LoRAs are applied for this call; without it the prompts are used as written.
   */
  loraDirs?: readonly string[];
  /** Folders holding hypernetwork .pt files (A1111's models/hypernetworks), for <hypernet:NAME:m> tags. */
  hypernetworkDirs?: readonly string[];
  /** Textual-inversion embeddings the prompt and the negative prompt may name (adapters/embeddings.ts). */
  embeddings?: EmbeddingLookup;
  /** Called after each step with (step index, total). */
  onStep?: (i: number, total: number) => void;
}

export interface Txt2ImgResult {
  /** The final latents [B, C, h, w], before the VAE. */
  latents: Tensor;
  /** Images [B, 3, H, W] in [0, 1], float32 on the CPU. */
  images: Tensor;
  /** The settings used, with defaults filled in. */
  settings: Required<Omit<Txt2ImgOptions, "onStep" | "loraDirs" | "embeddings" | "hypernetworkDirs">>;
}

/** The VAE's downsampling factor (8 for SD; 2^(levels−1) in general). */
export function latentScale(vae: AutoencoderKL): number {
  return 2 ** (vae.config.blockOutChannels.length - 1);
}

export function resolveTxt2Img(model: StableDiffusion, o: Txt2ImgOptions): Txt2ImgResult["settings"] {
  const scale = latentScale(model.vae);
  const defaultSize = model.unet.config.sampleSize * scale;
  const s = {
    prompt: o.prompt,
    negative: o.negative ?? "",
    sampler: o.sampler ?? "euler_a",
    steps: o.steps ?? 20,
    cfg: o.cfg ?? 7,
    seed: o.seed ?? Math.floor(Math.random() * 2 ** 32),
    width: o.width ?? defaultSize,
    height: o.height ?? defaultSize,
    batch: o.batch ?? 1,
    clipSkip: o.clipSkip ?? 1,
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new Error(what);
  };
  check(typeof s.prompt === "string", "prompt must be a string");
  check(
    Number.isInteger(s.steps) && s.steps >= 1 && s.steps <= 1000,
    `steps must be an integer in 1..1000, got ${s.steps}`,
  );
  check(Number.isFinite(s.cfg) && s.cfg >= 0, `cfg must be a number >= 0, got ${s.cfg}`);
  check(Number.isSafeInteger(s.seed) && s.seed >= 0, `seed must be a non-negative integer, got ${s.seed}`);
  for (const [name, v] of [
    ["width", s.width],
    ["height", s.height],
  ] as const) {
    check(Number.isInteger(v) && v > 0 && v % scale === 0, `${name} must be a positive multiple of ${scale}, got ${v}`);
  }
  check(
    Number.isInteger(s.batch) && s.batch >= 1 && s.batch <= 64,
    `batch must be an integer in 1..64, got ${s.batch}`,
  );
  check(Number.isInteger(s.clipSkip) && s.clipSkip >= 1, `clip skip must be an integer >= 1, got ${s.clipSkip}`);
  return s;
}

/**
 * Takes the <lora:…> tags out of the prompts and attaches those LoRAs to the
 * model (bypass mode); remove() restores the model.
 */
export function applyPromptNetworks(
  model: StableDiffusion,
  prompts: readonly string[],
  o: { loraDirs: readonly string[]; hypernetworkDirs?: readonly string[] },
): AppliedLoras & { prompts: string[] } {
  const parsed = prompts.map((p) => extractNetworks(p));
  const tags = parsed.flatMap((p) => p.networks);
  const hyper = tags.filter((t) => t.kind === HYPERNETWORK_TAG);
  const hypernets = hyper.length
    ? applyHypernetworkTags(model.unet, hyper, { hypernetworkDirs: o.hypernetworkDirs ?? [] })
    : null;
  let applied: AppliedLoras;
  try {
    applied = applyLoraTags(
      model,
      tags.filter((t) => t.kind !== HYPERNETWORK_TAG),
      o,
    );
  } catch (e) {
    hypernets?.remove();
    throw e;
  }
  const remove = () => {
    applied.remove();
    hypernets?.remove();
  };
  return { networks: applied.networks, remove, prompts: parsed.map((p) => p.prompt) };
}

/** Generates images; the returned tensors are the caller's to dispose. */
export function txt2img(model: StableDiffusion, o: Txt2ImgOptions): Txt2ImgResult {
  const settings = resolveTxt2Img(model, o);
  const { batch, cfg, steps } = settings;
  const loras =
    o.loraDirs || o.hypernetworkDirs
      ? applyPromptNetworks(model, [settings.prompt, settings.negative], {
          loraDirs: o.loraDirs ?? [],
          hypernetworkDirs: o.hypernetworkDirs,
        })
      : null;
  const [prompt, negative] = loras ? loras.prompts : [settings.prompt, settings.negative];
  let sampler: ReturnType<typeof createSampler>;
  try {
    sampler = createSampler(settings.sampler, model.scheduler);
  } catch (e) {
    loras?.remove();
    throw e;
  }
  const scale = latentScale(model.vae);
  const dtype = model.unet.parameters()[0].dtype;
  try {
    return noGrad(() =>
      scope(() => {
        const guided = cfg !== 1;
        const prompts = guided
          ? [...Array(batch).fill(negative), ...Array(batch).fill(prompt)]
          : Array(batch).fill(prompt);
        const context = encodePrompts(model.textEncoder, model.tokenizer, prompts, {
          clipSkip: settings.clipSkip,
          padId: model.kind === "sd2" ? 0 : undefined,
          embeddings: o.embeddings,
        }).to(model.device, dtype);

        sampler.setTimesteps(steps);
        const generator = new Generator(settings.seed);
        const shape = [batch, model.unet.config.inChannels, settings.height / scale, settings.width / scale];
        let latents = scope(() => randn(shape, { generator }).to(model.device, dtype).mul(sampler.initNoiseSigma));
        for (const [i, t] of sampler.timesteps.entries()) {
          const next = keep(
            scope(() => {
              const input = sampler.scaleModelInput(latents, t);
              const noise = model.unet.forward(guided ? cat([input, input]) : input, t, context);
              let eps = noise;
              if (guided) {
                const [uncond, cond] = noise.chunk(2);
                eps = uncond.add(cond.sub(uncond), cfg);
              }
              return sampler.step(eps, t, latents, generator).prevSample;
            }),
          );
          latents.dispose(); // each step's latent is freed as soon as the next exists
          latents = next;
          o.onStep?.(i + 1, steps);
        }
        generator.dispose();
        const images = decodeToImages(model.vae, latents);
        return { latents, images, settings };
      }),
    );
  } finally {
    sampler.dispose();
    loras?.remove();
  }
}

/** Latents → [B, 3, H, W] float32 images in [0, 1] on the CPU (diffusers' VaeImageProcessor: x/2 + 0.5, clamped). */
export function decodeToImages(vae: AutoencoderKL, latents: Tensor): Tensor {
  return scope(() =>
    vae.decodeLatents(latents.to(vae.parameters()[0].dtype)).div(2).add(0.5).clamp(0, 1).to("cpu", "float32"),
  );
}

/** [B, 3, H, W] images in [0, 1] → one HWC uint8 RGB buffer per image (diffusers numpy_to_pil: ·255, round). */
export function toRgbBytes(images: Tensor): { width: number; height: number; data: Uint8Array }[] {
  const [b, , h, w] = images.shape;
  return scope(() => {
    const bytes = round(images.mul(255)).clamp(0, 255).to("uint8").permute(0, 2, 3, 1).contiguous();
    const all = bytes.toTypedArray() as Uint8Array;
    return Array.from({ length: b }, (_, i) => ({
      width: w,
      height: h,
      data: all.slice(i * h * w * 3, (i + 1) * h * w * 3),
    }));
  });
}
