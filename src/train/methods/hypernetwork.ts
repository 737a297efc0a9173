// Hypernetwork training (method hypernetwork), as AUTOMATIC1111 trains one
// (AUTOMATIC1111/stable-diffusion-webui modules/hypernetworks/hypernetwork.py
// `create_hypernetwork`, `train_hypernetwork`): the model is frozen; a new
// hypernetwork (a k/v module pair per context width, initialised as
// HypernetworkModule does) is attached to the UNet's attentions and only its
// weights learn. While training the multiplier is 1 and dropout is on.
// Saved as A1111's hypernetwork .pt, for its models/hypernetworks folder and
// <hypernet:NAME:m>.
import { basename, join } from "node:path";
import {
  type AppliedHypernetworks,
  applyHypernetworks,
  createHypernetwork,
  HYPERNETWORK_ACTIVATIONS,
  saveHypernetwork,
  WEIGHT_INITS,
} from "../../adapters/hypernetwork.js";
import type { Tensor } from "../../engine/index.js";
import { f } from "../config-fields.js";
import { defineMethod, type TrainingMethod } from "./method.js";

const HN_FIELDS = {
  name: f.text({ default: "", doc: "the hypernetwork's name: the saved file's stem, what <hypernet:NAME:m> uses" }),
  sizes: f.list(f.int({ min: 1, doc: "" }), {
    default: [],
    doc: "context widths that get a module pair ([] = every attention width of the model: A1111's 768, 320, 640, 1280 on SD1)",
  }),
  layer_structure: f.list(f.number({ above: 0, doc: "" }), {
    default: [1, 2, 1],
    nonEmpty: true,
    doc: "widths of the layers as multiples of the context width; starts and ends with 1",
  }),
  activation: f.oneOf(HYPERNETWORK_ACTIVATIONS, { default: "linear", doc: "activation after each hidden layer" }),
  weight_init: f.oneOf(WEIGHT_INITS, { default: "Normal", doc: "weight initialisation (Normal = N(0, 0.01))" }),
  layer_norm: f.bool({ default: false, doc: "a LayerNorm after every Linear" }),
  use_dropout: f.bool({ default: false, doc: "dropout 0.3 after the hidden layers" }),
  last_layer_dropout: f.bool({ default: false, doc: "dropout also before the last layer" }),
  activate_output: f.bool({ default: false, doc: "the activation after the last layer too" }),
};

export const hypernetwork = defineMethod({
  name: "hypernetwork",
  doc: "A1111 hypernetwork: small MLPs on the attentions' key/value context (A1111 .pt)",
  schema: { hypernetwork: f.group(HN_FIELDS, "hypernetwork settings (method hypernetwork)") },
  formats: ["hypernetwork_pt"],
  // A1111's default hypernetwork learning rate
  defaultLearningRate: 1e-5,
  resolve(c, r) {
    const h = c.hypernetwork;
    if (!r.active) {
      for (const [k, fd] of Object.entries(HN_FIELDS))
        if (fd.default !== undefined && !Array.isArray(fd.default))
          r.pointless(`hypernetwork.${k}`, fd.default, "method is not hypernetwork");
      return;
    }
    if (h.name === "" || /[\\/:<>]/.test(h.name))
      throw r.error("hypernetwork.name", `hypernetwork.name '${h.name}' must be a file stem without / \\ : < >`);
    const ls = h.layer_structure;
    if (ls.length < 2 || ls[0] !== 1 || ls[ls.length - 1] !== 1)
      throw r.error("hypernetwork.layer_structure", `hypernetwork.layer_structure [${ls}] must start and end with 1`);
    if (r.given("train_text_encoder") === true)
      throw r.error("train_text_encoder", "a hypernetwork trains only its own weights; drop train_text_encoder");
    c.train_text_encoder = false;
    if (h.last_layer_dropout && !h.use_dropout)
      throw r.error("hypernetwork.last_layer_dropout", "hypernetwork.last_layer_dropout needs use_dropout");
  },
  create(c, ctx): TrainingMethod {
    const { model } = ctx;
    const h = c.hypernetwork;
    const widths = attentionWidths(model.unet);
    const sizes = h.sizes.length ? h.sizes : widths;
    const hn = createHypernetwork({
      name: h.name,
      sizes,
      layerStructure: h.layer_structure,
      activation: h.activation,
      weightInit: h.weight_init,
      layerNorm: h.layer_norm,
      useDropout: h.use_dropout,
      lastLayerDropout: h.last_layer_dropout,
      activateOutput: h.activate_output,
      generator: ctx.generator,
    });
    let applied: AppliedHypernetworks;
    try {
      // a width no attention has is an error here, before anything runs
      applied = applyHypernetworks(model.unet, [hn]);
    } catch (e) {
      hn.dispose();
      throw e;
    }
    for (const [name, miss] of applied.unused)
      ctx.log(`hypernetwork '${name}': no attention has width ${miss.join(", ")}`);
    model.vae.requiresGrad_(false);
    model.textEncoder.requiresGrad_(false).eval();
    model.unet.requiresGrad_(false).train();
    hn.training = true;
    for (const t of hn.parameters()) t.requiresGrad_(true);
    hn.meta.sdCheckpointName = basename(model.info.path).replace(/\.[^.]*$/, "");

    const named = () => {
      const out = new Map<string, Tensor>();
      for (const [size, pair] of hn.layers)
        pair.forEach((m, i) => {
          for (const [k, t] of m.tensors) out.set(`hypernetwork.${size}.${i === 0 ? "k" : "v"}.${k}`, t);
        });
      return out;
    };
    return {
      name: "hypernetwork",
      trainsTextEncoder: false,
      groups: () => [{ name: "hypernetwork", params: hn.parameters(), lr: c.learning_rate }],
      namedTrainable: named,
      save(r) {
        const path = join(r.outputDir, `${h.name}${r.tag}.pt`);
        const m = /step0*(\d+)/.exec(r.tag);
        hn.meta.step = m ? Number(m[1]) : null;
        saveHypernetwork(path, hn);
        return [{ path, kind: "hypernetwork", format: "hypernetwork_pt" }];
      },
      dispose() {
        applied.remove();
        hn.dispose();
        model.unet.eval();
      },
    };
  },
});

/** The context widths of a UNet's attentions (cross: the text width; self: the channels), ascending. */
export function attentionWidths(unet: { namedModules(): Map<string, unknown> }): number[] {
  const widths = new Set<number>();
  for (const m of unet.namedModules().values()) {
    const a = m as { kvContext?: unknown; config?: { queryDim: number; crossAttentionDim?: number } };
    if (a && "kvContext" in a && a.config) widths.add(a.config.crossAttentionDim ?? a.config.queryDim);
  }
  return [...widths].sort((x, y) => x - y);
}
