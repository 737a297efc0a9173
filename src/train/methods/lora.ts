// LoRA (method lora, or Dreambooth with use_lora — the A1111 extension's
// "Use LoRA"): only the adapters train and the base stays bit-identical.
// lora.algo picks the adapter (lora, locon, loha, lokr, dora, ia3, full:
// adapters/network-algo.ts); kohya's network_args spellings are accepted in
// lora.network_args and mapped to the fields here (./lora-network-args.ts).
// Saved as a kohya-format file (ss_* metadata) that A1111, Forge and ComfyUI
// load; full-model formats in save.formats get the base with the LoRA merged.
import { join } from "node:path";
import { saveLora } from "../../adapters/network.js";
import { ALGOS, injectAlgo, networkOptionsError } from "../../adapters/network-algo.js";
import { keep, noGrad, scope, type Tensor } from "../../engine/index.js";
import { f, type Infer } from "../config-fields.js";
import { saveFullModel } from "./dreambooth.js";
import { applyNetworkArgs, networkArgNotes } from "./lora-network-args.js";
import { defineMethod, type SavedArtifact, type TrainingMethod } from "./method.js";

const LORA_FIELDS = {
  rank: f.int({ min: 1, max: 1024, default: 4, doc: "LoRA rank (kohya network_dim)" }),
  alpha: f.number({ above: 0, auto: "rank (scale 1)", doc: "LoRA alpha; the update is scaled by alpha/rank" }),
  dropout: f.number({ min: 0, below: 1, default: 0, doc: "dropout on the LoRA down projection's output" }),
  unet: f.bool({ default: true, doc: "put LoRA layers on the UNet" }),
  text_encoder: f.bool({ auto: "train_text_encoder", doc: "put LoRA layers on the text encoder" }),
  conv_rank: f.int({
    min: 0,
    max: 1024,
    default: 0,
    doc: "rank of LoRA on 3×3 convolutions (LoCon, kohya conv_dim); 0 = none",
  }),
  conv_alpha: f.number({ min: 0, auto: "conv_rank", doc: "alpha of the convolution LoRA" }),
  algo: f.oneOf(ALGOS, {
    default: "lora",
    doc: "adapter algorithm (LyCORIS algo): lora, locon (LoRA + 3×3 convs), loha, lokr, dora, ia3, full",
  }),
  rank_dropout: f.number({
    min: 0,
    below: 1,
    default: 0,
    doc: "drops whole ranks (LoRA) or ΔW rows (LoHa/LoKr) per step",
  }),
  rank_dropout_scale: f.bool({
    default: false,
    doc: "rescale rank dropout by the kept mean (LyCORIS rank_dropout_scale)",
  }),
  module_dropout: f.number({ min: 0, below: 1, default: 0, doc: "skips a whole module for a step" }),
  factor: f.int({ min: -1, default: -1, doc: "LoKr factor (kron split of each dimension); -1 = most balanced" }),
  decompose_both: f.bool({ default: false, doc: "LoKr: low-rank w1 too" }),
  use_tucker: f.bool({ default: false, doc: "Tucker form for 3×3 convs (LoCon, LoHa, LoKr; LyCORIS use_tucker)" }),
  weight_decompose: f.bool({
    default: false,
    doc: "DoRA on top of locon/loha/lokr (LyCORIS dora_wd); algo dora = LoRA + this",
  }),
  dora_on_output: f.bool({
    default: false,
    doc: "DoRA norms over output rows (LyCORIS wd_on_out) instead of input columns, the axis A1111 and ComfyUI both read",
  }),
  train_norm: f.bool({
    default: false,
    doc: "also train the GroupNorm/LayerNorm weight and bias of the adapted blocks (LyCORIS train_norm; w_norm/b_norm keys)",
  }),
  network_args: f.list(f.text({ nonEmpty: true, doc: "KEY=VALUE" }), {
    default: [],
    doc: "kohya/LyCORIS network_args (conv_dim=8, algo=loha, …), mapped to the lora.* fields",
  }),
};

/** The adapter options of a resolved lora section, with config field names for messages. */
function networkOptions(l: TrainLora, textEncoder: boolean) {
  const fields: Record<string, string> = {
    algo: "lora.algo",
    rank: "lora.rank",
    convRank: "lora.conv_rank",
    dropout: "lora.dropout",
    rankDropout: "lora.rank_dropout",
    moduleDropout: "lora.module_dropout",
    factor: "lora.factor",
    decomposeBoth: "lora.decompose_both",
    useTucker: "lora.use_tucker",
    weightDecompose: "lora.weight_decompose",
  };
  return {
    algo: l.algo,
    rank: l.rank,
    alpha: l.alpha,
    convRank: l.conv_rank > 0 ? l.conv_rank : undefined,
    convAlpha: l.conv_rank > 0 ? l.conv_alpha : undefined,
    dropout: l.dropout,
    rankDropout: l.rank_dropout,
    rankDropoutScale: l.rank_dropout_scale,
    moduleDropout: l.module_dropout,
    factor: l.factor,
    decomposeBoth: l.decompose_both,
    useTucker: l.use_tucker,
    weightDecompose: l.weight_decompose,
    doraOnOutput: l.dora_on_output,
    trainNorm: l.train_norm,
    unet: l.unet,
    textEncoder,
    field: (k: string) => fields[k] ?? `lora.${k}`,
  };
}

type TrainLora = Infer<typeof LORA_FIELDS>;

export const lora = defineMethod({
  name: "lora",
  doc: "LoRA / LoCon adapters (kohya format); also Dreambooth with use_lora",
  schema: {
    use_lora: f.bool({
      auto: "true for method lora, else false",
      doc: "Dreambooth training LoRA weights (the A1111 extension's Use LoRA); same as method lora",
    }),
    lora: f.group(LORA_FIELDS, "LoRA settings (method lora or use_lora)"),
  },
  formats: ["lora", "ldm_safetensors", "diffusers"],
  defaultLearningRate: 1e-4,
  selects: (c) => c.method === "lora" || c.use_lora === true,
  resolve(c, r) {
    if (c.method === "lora" && r.given("use_lora") === false) {
      throw r.error("use_lora", "use_lora is false but method is lora; drop one of them");
    }
    c.use_lora = r.active;
    const l = c.lora;
    applyNetworkArgs(l as unknown as Record<string, unknown>, r);
    if (r.active) {
      // lora.text_encoder and train_text_encoder are one switch.
      const te = r.given("lora.text_encoder");
      const tt = r.given("train_text_encoder");
      if (te !== undefined && tt !== undefined && te !== tt) {
        throw r.error(
          "lora.text_encoder",
          `lora.text_encoder is ${te} but train_text_encoder is ${tt}; they are one switch`,
        );
      }
      c.train_text_encoder = (te ?? c.train_text_encoder) as boolean;
      if (!l.unet && !c.train_text_encoder) {
        throw r.error("lora.unet", "lora.unet and lora.text_encoder are both false: nothing to train");
      }
    } else {
      for (const [k, fd] of Object.entries(LORA_FIELDS)) {
        if (fd.default !== undefined)
          r.pointless(`lora.${k}`, fd.default, "no LoRA is trained (method dreambooth, use_lora false)");
      }
    }
    if (r.isAuto(l.alpha)) l.alpha = l.rank;
    if (r.isAuto(l.conv_alpha)) l.conv_alpha = l.conv_rank;
    if (l.conv_rank > 0 && l.conv_alpha === 0)
      throw r.error("lora.conv_alpha", "lora.conv_alpha must be > 0 when conv_rank > 0");
    if (!r.active) {
      r.pointless("lora.alpha", l.rank, "no LoRA is trained");
      r.pointless("lora.conv_alpha", l.conv_rank, "no LoRA is trained");
      r.pointless("lora.text_encoder", c.train_text_encoder, "no LoRA is trained (use train_text_encoder)");
    }
    l.text_encoder = c.train_text_encoder;
    if (r.active) {
      if (l.factor === 0) throw r.error("lora.factor", "lora.factor must be a positive integer or -1");
      const problem = networkOptionsError(networkOptions(l, l.text_encoder));
      if (problem) throw r.error(/^lora\.[a-z_]+/.exec(problem)?.[0] ?? "lora.algo", problem);
    }
  },
  create(c, { model, generator, log }): TrainingMethod {
    const l = c.lora;
    const trainsTextEncoder = l.text_encoder; // resolve() made it one switch with train_text_encoder
    model.vae.requiresGrad_(false);
    model.unet.requiresGrad_(false);
    model.textEncoder.requiresGrad_(false);
    for (const note of networkArgNotes(l.network_args)) log(note);
    const network = injectAlgo(model, { ...networkOptions(l, trainsTextEncoder), generator });
    model.unet.train();
    model.textEncoder.train(trainsTextEncoder);

    /** The base's weights with the LoRA merged in, as new tensors: the live base stays untouched. */
    const merged = (component: "unet" | "textEncoder", sd: Map<string, Tensor>) => {
      const out = new Map(sd);
      const temps: Tensor[] = [];
      for (const m of network.modules) {
        if (m.target.component !== component) continue;
        const key = `${m.target.path}.weight`;
        const w = out.get(key);
        if (!w) throw new Error(`merging the LoRA: no weight '${key}' in the ${component}`);
        const t = keep(noGrad(() => scope(() => w.float().add(m.deltaWeight()).to(w.dtype))));
        temps.push(t);
        out.set(key, t);
      }
      return { sd: out, temps };
    };

    return {
      name: "lora",
      trainsTextEncoder,
      groups() {
        const g = [];
        const unet = network.trainableParameters("unet");
        if (unet.length) g.push({ name: "unet", params: unet, lr: c.learning_rate });
        const te = network.trainableParameters("textEncoder");
        if (te.length) g.push({ name: "text_encoder", params: te, lr: c.text_encoder_lr });
        if (g.length === 0) throw new Error("lora: nothing to train (lora.unet and lora.text_encoder are both off)");
        return g;
      },
      namedTrainable() {
        const trainable = new Set(network.trainableParameters());
        const out = new Map<string, Tensor>();
        for (const [k, t] of network.stateDict()) if (trainable.has(t)) out.set(k, t);
        return out;
      },
      save(r) {
        const out: SavedArtifact[] = [];
        const formats = c.save.formats;
        if (formats.includes("lora")) {
          const path = join(r.outputDir, `lora${r.tag}.safetensors`);
          saveLora(path, network, r.metadata, {
            dtype: c.save.half ? "float16" : undefined,
            vPrediction: model.info.predictionType === "v_prediction",
            resolution: c.resolution,
            clipSkip: c.clip_skip,
          });
          out.push({ path, kind: "lora", format: "kohya_lora" });
        }
        const full = formats.filter((x) => x !== "lora");
        if (full.length) {
          const unet = merged("unet", model.unet.stateDict());
          const te = merged("textEncoder", model.textEncoder.stateDict());
          try {
            out.push(...saveFullModel(model, c.save, full, "lora-merged", r, { unet: unet.sd, textEncoder: te.sd }));
          } finally {
            for (const t of [...unet.temps, ...te.temps]) t.dispose();
          }
        }
        return out;
      },
      dispose() {
        network.remove();
        model.unet.eval();
        model.textEncoder.eval();
      },
    };
  },
});
