// Loading and saving whole SD checkpoints: the tiny single-file fixture loads
// to exactly the tiny diffusers tensors; LDM and diffusers-folder round trips;
// fp16; .ckpt with Lightning wrapper, schedule buffers and EMA; shards, .bin
// and variants in diffusers folders.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { disposeAll, scope, type Tensor } from "../../src/engine/index.js";
import { loadCheckpoint, saveCheckpoint } from "../../src/formats/checkpoint.js";
import { inspectSafetensors, loadSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import {
  assertSameTensors,
  ckptBytes,
  disposeComponents,
  TINY_CONFIGS,
  TINY_LDM,
  tinyComponents,
} from "./checkpoint-fixtures.js";

checkLeaks();

const dir = tempDir("atelier-checkpoint-");
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const tmp = (name: string) => join(dir, `${n++}-${name}`);

const meta = JSON.parse(readFileSync(sharedFixture("models/models_meta.json"), "utf8"));

describe("single-file LDM checkpoint", () => {
  test("the tiny fixture loads to exactly the tiny diffusers tensors", () => {
    const ref = tinyComponents();
    const { components, info } = loadCheckpoint(TINY_LDM);
    try {
      assertSameTensors(components.unet!, ref.unet, "unet");
      assertSameTensors(components.vae!, ref.vae, "vae");
      assertSameTensors(components.textEncoder!, ref.textEncoder, "text encoder");
      assert.equal(info.format, "safetensors");
      assert.equal(info.version, "sd1");
      assert.equal(info.predictionType, "epsilon");
      assert.match(info.predictionReason, /SD1/);
      assert.equal(info.inpainting, false);
      assert.deepEqual(info.ignoredKeys, []);
      // Configs inferred from shapes match the configs the fixtures were made with.
      const u = meta.unet_tiny.config;
      assert.deepEqual(info.configs.unet.blockOutChannels, u.block_out_channels);
      assert.equal(info.configs.unet.layersPerBlock, u.layers_per_block);
      assert.deepEqual(info.configs.unet.downBlockTypes, u.down_block_types);
      assert.deepEqual(info.configs.unet.upBlockTypes, u.up_block_types);
      assert.equal(info.configs.unet.crossAttentionDim, u.cross_attention_dim);
      assert.equal(info.configs.unet.attentionHeadDim, u.attention_head_dim);
      assert.equal(info.configs.unet.useLinearProjection, false);
      const v = meta.vae_tiny.config;
      assert.deepEqual(info.configs.vae.blockOutChannels, v.block_out_channels);
      assert.equal(info.configs.vae.layersPerBlock, v.layers_per_block);
      assert.equal(info.configs.vae.latentChannels, v.latent_channels);
      const t = meta.text_encoder_tiny.config;
      for (const [k, f] of [
        ["vocab_size", "vocabSize"],
        ["hidden_size", "hiddenSize"],
        ["intermediate_size", "intermediateSize"],
        ["num_hidden_layers", "numHiddenLayers"],
        ["num_attention_heads", "numAttentionHeads"],
        ["max_position_embeddings", "maxPositionEmbeddings"],
        ["hidden_act", "hiddenAct"],
      ] as const) {
        assert.equal(info.configs.textEncoder[f], t[k], k);
      }
      assert.ok(info.notes.some((s) => /attention heads cannot be read/.test(s)));
    } finally {
      disposeComponents(ref);
      disposeComponents(components);
    }
  });

  test("overrides, dtype on load and a subset of components", () => {
    const { components, info } = loadCheckpoint(TINY_LDM, {
      dtype: "float16",
      components: ["unet"],
      overrides: { unet: { attentionHeadDim: 4, sampleSize: 8 } },
    });
    try {
      assert.deepEqual(Object.keys(components), ["unet"]);
      assert.ok([...components.unet!.values()].every((t) => t.dtype === "float16"));
      assert.equal(info.configs.unet.attentionHeadDim, 4);
      assert.ok(!info.notes.some((s) => /UNet attention heads/.test(s)));
      assert.ok(info.ignoredKeys.some((k) => k.startsWith("first_stage_model.")));
      // The fp16 rounding is torch's: the same bytes as the recorded f16 file.
      const f16 = loadSafetensors(sharedFixture("models/unet_tiny_f16.safetensors")).tensors;
      try {
        assertSameTensors(components.unet!, f16, "unet f16");
      } finally {
        disposeAll(f16);
      }
    } finally {
      disposeComponents(components);
    }
  });

  test("saving back to LDM gives the fixture's keys and values", () => {
    const out = tmp("tiny.safetensors");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "ldm", configs: TINY_CONFIGS });
    } finally {
      disposeComponents(c);
    }
    const saved = loadSafetensors(out).tensors;
    const ref = loadSafetensors(TINY_LDM).tensors;
    try {
      assert.deepEqual([...saved.keys()].sort(), [...ref.keys()].sort());
      for (const [k, r] of ref) {
        const s = saved.get(k)!;
        assert.deepEqual(s.toArray(), r.toArray(), k);
        // The fixture keeps diffusers v0.25's [C,1,1] VAE attention biases; A1111 needs [C] (diffusers#6226).
        const expectShape = /mid\.attn_1\.(q|k|v|proj_out)\.bias$/.test(k) ? [r.shape[0]] : r.shape;
        assert.deepEqual(s.shape, expectShape, k);
      }
    } finally {
      disposeAll([saved, ref]);
    }
    // Configs inferred from the tensors give the same file.
    const c2 = tinyComponents();
    const out2 = tmp("tiny-inferred.safetensors");
    try {
      saveCheckpoint(c2, out2, { layout: "ldm" });
    } finally {
      disposeComponents(c2);
    }
    assert.deepEqual(
      [...inspectSafetensors(out2).tensors.keys()].sort(),
      [...inspectSafetensors(out).tensors.keys()].sort(),
    );
  });

  test("fp16 LDM save, then load back", () => {
    const out = tmp("tiny-f16.safetensors");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "ldm", dtype: "float16", predictionType: "epsilon" });
      const header = inspectSafetensors(out);
      assert.ok([...header.tensors.values()].every((i) => i.dtype === "float16"));
      assert.equal(header.metadata["modelspec.prediction_type"], "epsilon");
      const back = loadCheckpoint(out);
      try {
        assert.match(back.info.predictionReason, /modelspec\.prediction_type/);
        scope(() => {
          for (const k of ["unet", "vae", "textEncoder"] as const) {
            const half = new Map([...c[k]].map(([name, t]) => [name, t.to("float16")] as [string, Tensor]));
            assertSameTensors(back.components[k]!, half, k);
          }
        });
      } finally {
        disposeComponents(back.components);
      }
    } finally {
      disposeComponents(c);
    }
  });
});

describe("diffusers folder", () => {
  test("round trip: save, load, same tensors and configs; tokenizer copied", () => {
    const out = tmp("pipe");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "diffusers", configs: TINY_CONFIGS, tokenizerFrom: sharedFixture("tokenizer") });
      for (const f of [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
      ]) {
        assert.ok(existsSync(join(out, f)), f);
      }
      const index = JSON.parse(readFileSync(join(out, "model_index.json"), "utf8"));
      assert.equal(index._class_name, "StableDiffusionPipeline");
      assert.deepEqual(index.unet, ["diffusers", "UNet2DConditionModel"]);
      const unetJson = JSON.parse(readFileSync(join(out, "unet/config.json"), "utf8"));
      assert.deepEqual(unetJson.block_out_channels, [32, 64]);
      assert.equal(unetJson.layers_per_block, 1);
      assert.equal(inspectSafetensors(join(out, "text_encoder/model.safetensors")).metadata.format, "pt");
      const back = loadCheckpoint(out);
      try {
        for (const k of ["unet", "vae", "textEncoder"] as const) assertSameTensors(back.components[k]!, c[k], k);
        assert.equal(back.info.format, "diffusers");
        assert.deepEqual(back.info.configs.unet, TINY_CONFIGS.unet);
        assert.deepEqual(back.info.configs.vae, TINY_CONFIGS.vae);
        assert.deepEqual(back.info.configs.textEncoder, TINY_CONFIGS.textEncoder);
        assert.equal(back.info.predictionType, "epsilon");
        assert.match(back.info.predictionReason, /scheduler_config\.json/);
      } finally {
        disposeComponents(back.components);
      }
      // An existing folder is only replaced on request.
      assert.throws(() => saveCheckpoint(c, out, { layout: "diffusers" }), /already exists/);
      saveCheckpoint({ unet: c.unet }, out, { layout: "diffusers", overwrite: true, predictionType: "v_prediction" });
      assert.ok(!existsSync(join(out, "vae")));
      const sched = JSON.parse(readFileSync(join(out, "scheduler/scheduler_config.json"), "utf8"));
      assert.equal(sched.prediction_type, "v_prediction");
    } finally {
      disposeComponents(c);
    }
  });

  test("fp16 variant files; the plain name is preferred, the variant found when alone", () => {
    const out = tmp("pipe-f16");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "diffusers", dtype: "float16", variant: "fp16" });
      assert.ok(existsSync(join(out, "unet/diffusion_pytorch_model.fp16.safetensors")));
      assert.ok(existsSync(join(out, "text_encoder/model.fp16.safetensors")));
      assert.equal(JSON.parse(readFileSync(join(out, "text_encoder/config.json"), "utf8")).torch_dtype, "float16");
      for (const variant of ["fp16", undefined]) {
        const back = loadCheckpoint(out, { variant, dtype: "float32" });
        try {
          assert.ok([...back.components.unet!.values()].every((t) => t.dtype === "float32"));
          if (!variant) assert.ok(back.info.notes.some((s) => /only the fp16 variant/.test(s)));
          scope(() => {
            const want = new Map([...c.vae].map(([k, t]) => [k, t.to("float16").to("float32")] as [string, Tensor]));
            assertSameTensors(back.components.vae!, want, "vae");
          });
        } finally {
          disposeComponents(back.components);
        }
      }
      assert.throws(
        () => loadCheckpoint(out, { variant: "bf16" }),
        /no weights \(looked for diffusion_pytorch_model\.bf16\.safetensors/,
      );
    } finally {
      disposeComponents(c);
    }
  });

  test("sharded safetensors, .bin pickles, old VAE attention names and position_ids", () => {
    const out = tmp("pipe-mixed");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "diffusers", configs: TINY_CONFIGS });
      // unet: two shards + index
      const unetFile = join(out, "unet/diffusion_pytorch_model.safetensors");
      const keys = [...c.unet.keys()];
      const half = Math.floor(keys.length / 2);
      const weightMap: Record<string, string> = {};
      keys.forEach((k, i) => {
        weightMap[k] =
          i < half
            ? "diffusion_pytorch_model-00001-of-00002.safetensors"
            : "diffusion_pytorch_model-00002-of-00002.safetensors";
      });
      saveSafetensors(
        join(out, "unet/diffusion_pytorch_model-00001-of-00002.safetensors"),
        new Map(keys.slice(0, half).map((k) => [k, c.unet.get(k)!])),
      );
      saveSafetensors(
        join(out, "unet/diffusion_pytorch_model-00002-of-00002.safetensors"),
        new Map(keys.slice(half).map((k) => [k, c.unet.get(k)!])),
      );
      writeFileSync(
        join(out, "unet/diffusion_pytorch_model.safetensors.index.json"),
        JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      rmSync(unetFile);
      // vae: a torch .bin with diffusers < 0.17 attention names
      const old = new Map(
        [...c.vae].map(([k, t]) => [
          k
            .replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn."),
          t,
        ]),
      );
      writeFileSync(join(out, "vae/diffusion_pytorch_model.bin"), ckptBytes(old));
      rmSync(join(out, "vae/diffusion_pytorch_model.safetensors"));
      // text encoder: pytorch_model.bin with the position_ids buffer older transformers kept
      const pos = scope(
        () =>
          new Map([
            [
              "text_model.embeddings.position_ids",
              c.textEncoder.get("text_model.embeddings.position_embedding.weight")!.sum(1).to("int64").unsqueeze(0),
            ],
          ]),
      );
      try {
        writeFileSync(join(out, "text_encoder/pytorch_model.bin"), ckptBytes(new Map([...c.textEncoder, ...pos])));
      } finally {
        disposeAll(pos);
      }
      rmSync(join(out, "text_encoder/model.safetensors"));
      const back = loadCheckpoint(out);
      try {
        for (const k of ["unet", "vae", "textEncoder"] as const) assertSameTensors(back.components[k]!, c[k], k);
        assert.deepEqual(back.info.ignoredKeys, ["text_encoder/text_model.embeddings.position_ids"]);
      } finally {
        disposeComponents(back.components);
      }
    } finally {
      disposeComponents(c);
    }
  });
});

describe(".ckpt single file", () => {
  test("Lightning wrapper, schedule buffers, position_ids and EMA weights", () => {
    const ref = loadSafetensors(TINY_LDM).tensors;
    const extra = scope(() => {
      const m = new Map<string, Tensor>();
      // LitEma buffers: dotless names under model_ema. (ldm/modules/ema.py), here twice the weights.
      for (const [k, t] of ref)
        if (k.startsWith("model.diffusion_model.")) m.set(`model_ema.${k.slice(6).replace(/\./g, "")}`, t.mul(2));
      const w = ref.get("model.diffusion_model.input_blocks.0.0.bias")!;
      m.set("betas", w.narrow(0, 0, 4).abs());
      m.set("alphas_cumprod", w.narrow(0, 0, 4).abs());
      m.set(
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        w.narrow(0, 0, 4).to("int64").unsqueeze(0),
      );
      return m;
    });
    const p = tmp("tiny.ckpt");
    try {
      writeFileSync(p, ckptBytes(new Map([...ref, ...extra]), { epoch: 3, global_step: 470000 }));
    } finally {
      disposeAll(extra);
    }
    const plain = loadCheckpoint(TINY_LDM);
    const fromCkpt = loadCheckpoint(p);
    const ema = loadCheckpoint(p, { ema: true, components: ["unet"] });
    try {
      for (const k of ["unet", "vae", "textEncoder"] as const)
        assertSameTensors(fromCkpt.components[k]!, plain.components[k]!, k);
      assert.equal(fromCkpt.info.format, "ckpt");
      assert.deepEqual(fromCkpt.info.metadata, { epoch: 3, global_step: 470000 });
      for (const k of ["betas", "alphas_cumprod", "cond_stage_model.transformer.text_model.embeddings.position_ids"]) {
        assert.ok(fromCkpt.info.ignoredKeys.includes(k), k);
      }
      assert.ok(fromCkpt.info.ignoredKeys.some((k) => k.startsWith("model_ema.")));
      assert.equal(ema.info.ema, true);
      scope(() => {
        const doubled = new Map([...plain.components.unet!].map(([k, t]) => [k, t.mul(2)] as [string, Tensor]));
        assertSameTensors(ema.components.unet!, doubled, "ema unet");
      });
      assert.throws(() => loadCheckpoint(TINY_LDM, { ema: true }), /has no EMA weights/);
    } finally {
      disposeAll([ref]);
      for (const r of [plain, fromCkpt, ema]) disposeComponents(r.components);
    }
  });

  test("an LDM .ckpt written by hand with the old CLIP spelling (no text_model.)", () => {
    const ref = loadSafetensors(TINY_LDM).tensors;
    const renamed = new Map(
      [...ref].map(([k, t]) => [
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."),
        t,
      ]),
    );
    const p = tmp("old-clip.ckpt");
    writeFileSync(p, ckptBytes(renamed));
    const a = loadCheckpoint(p, { components: ["textEncoder"] });
    const b = loadCheckpoint(TINY_LDM, { components: ["textEncoder"] });
    try {
      assertSameTensors(a.components.textEncoder!, b.components.textEncoder!, "text encoder");
    } finally {
      disposeAll([ref]);
      disposeComponents(a.components);
      disposeComponents(b.components);
    }
  });
});

describe("a copy beside a .yaml", () => {
  test("parameterization in the yaml decides the prediction type", () => {
    const p = tmp("with-yaml.safetensors");
    copyFileSync(TINY_LDM, p);
    writeFileSync(p.replace(/\.safetensors$/, ".yaml"), 'model:\n  params:\n    parameterization: "v"\n');
    const { components, info } = loadCheckpoint(p, { components: ["vae"] });
    disposeComponents(components);
    assert.equal(info.predictionType, "v_prediction");
    assert.match(info.predictionReason, /with-yaml\.yaml/);
  });
});
