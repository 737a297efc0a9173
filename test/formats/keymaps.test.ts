// Key maps: every key of the recorded SD1.5 and tiny maps (diffusers v0.25
// conversion script output) maps both ways exactly, and the map built from a
// config holds exactly the keys of the model.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { scope, tensor } from "../../src/engine/index.js";
import {
  convertStateDict,
  type KeyMap,
  SD_VAE,
  SD2_TEXT,
  SD15_TEXT,
  SD15_UNET,
  type TextEncoderConfig,
  textEncoderKeyMap,
  type UNetConfig,
  unetKeyMap,
  type VaeConfig,
  vaeKeyMap,
} from "../../src/formats/keymaps/index.js";
import { checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

type Recorded = Record<"unet" | "vae" | "text_encoder", Record<string, string>>;
const readJson = (p: string) => JSON.parse(readFileSync(sharedFixture(p), "utf8"));

const TINY_UNET: UNetConfig = {
  ...SD15_UNET,
  sampleSize: 8,
  layersPerBlock: 1,
  blockOutChannels: [32, 64],
  downBlockTypes: ["CrossAttnDownBlock2D", "DownBlock2D"],
  upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D"],
  crossAttentionDim: 32,
};
const TINY_VAE: VaeConfig = { ...SD_VAE, sampleSize: 16, blockOutChannels: [32, 64], layersPerBlock: 1 };
const TINY_TEXT: TextEncoderConfig = {
  ...SD15_TEXT,
  vocabSize: 1000,
  hiddenSize: 32,
  intermediateSize: 37,
  numHiddenLayers: 2,
  numAttentionHeads: 4,
  projectionDim: 32,
};

function checkAgainst(map: KeyMap, recorded: Record<string, string>): void {
  for (const [d, l] of Object.entries(recorded)) {
    assert.equal(map.map(d), l, `map(${d})`);
    assert.equal(map.unmap(l), d, `unmap(${l})`);
    assert.equal(map.unmap(map.map(d) as string), d);
  }
  // The map holds exactly the model's keys: nothing missing, nothing extra.
  assert.deepEqual([...map.diffusersKeys()].sort(), Object.keys(recorded).sort());
  assert.deepEqual([...map.ldmKeys()].sort(), Object.values(recorded).sort());
}

describe("SD1.5 key map", () => {
  const rec = readJson("models/sd15_diffusers_to_ldm_keymap.json") as Recorded;
  test("UNet", () => checkAgainst(unetKeyMap(SD15_UNET), rec.unet));
  test("VAE", () => checkAgainst(vaeKeyMap(SD_VAE), rec.vae));
  test("text encoder", () => checkAgainst(textEncoderKeyMap(SD15_TEXT, "clip"), rec.text_encoder));
  test("the LDM key list of the recorded checkpoint is covered", () => {
    const ldm = readJson("models/sd15_ldm_keys.json") as { keys: Record<string, unknown> };
    const maps = [unetKeyMap(SD15_UNET), vaeKeyMap(SD_VAE), textEncoderKeyMap(SD15_TEXT, "clip")];
    for (const k of Object.keys(ldm.keys))
      assert.ok(
        maps.some((m) => m.unmap(k) !== undefined),
        k,
      );
    assert.ok(maps[2].isIgnoredLdm("cond_stage_model.transformer.text_model.embeddings.position_ids"));
  });
});

describe("tiny key map (1 layer per block, 2 levels)", () => {
  const rec = readJson("models/sd_tiny_diffusers_to_ldm_keymap.json") as Recorded;
  test("UNet", () => checkAgainst(unetKeyMap(TINY_UNET), rec.unet));
  test("VAE", () => checkAgainst(vaeKeyMap(TINY_VAE), rec.vae));
  test("text encoder", () => checkAgainst(textEncoderKeyMap(TINY_TEXT, "clip"), rec.text_encoder));
});

describe("named transforms and aliases", () => {
  test("VAE mid-attention weights are conv1x1, biases flatBias", () => {
    const m = vaeKeyMap(SD_VAE);
    assert.equal(m.entryForDiffusers("decoder.mid_block.attentions.0.to_out.0.weight")?.transform, "conv1x1");
    assert.equal(m.entryForDiffusers("decoder.mid_block.attentions.0.to_out.0.bias")?.transform, "flatBias");
    assert.equal(m.entryForDiffusers("decoder.mid_block.attentions.0.group_norm.weight")?.transform, "none");
    // diffusers < 0.17 names
    assert.equal(m.map("encoder.mid_block.attentions.0.query.weight"), "first_stage_model.encoder.mid.attn_1.q.weight");
    assert.equal(
      m.map("encoder.mid_block.attentions.0.proj_attn.bias"),
      "first_stage_model.encoder.mid.attn_1.proj_out.bias",
    );
  });

  test("old CLIP spelling without text_model.", () => {
    const m = textEncoderKeyMap(SD15_TEXT, "clip");
    assert.equal(
      m.unmap("cond_stage_model.transformer.encoder.layers.3.mlp.fc1.weight"),
      "text_model.encoder.layers.3.mlp.fc1.weight",
    );
  });

  test("SD2 OpenCLIP names", () => {
    const m = textEncoderKeyMap(SD2_TEXT, "openclip");
    const P = "cond_stage_model.model.";
    const cases: [string, string][] = [
      ["text_model.embeddings.token_embedding.weight", `${P}token_embedding.weight`],
      ["text_model.embeddings.position_embedding.weight", `${P}positional_embedding`],
      ["text_model.final_layer_norm.weight", `${P}ln_final.weight`],
      ["text_model.encoder.layers.0.layer_norm1.bias", `${P}transformer.resblocks.0.ln_1.bias`],
      ["text_model.encoder.layers.22.layer_norm2.weight", `${P}transformer.resblocks.22.ln_2.weight`],
      ["text_model.encoder.layers.5.mlp.fc1.weight", `${P}transformer.resblocks.5.mlp.c_fc.weight`],
      ["text_model.encoder.layers.5.mlp.fc2.bias", `${P}transformer.resblocks.5.mlp.c_proj.bias`],
      ["text_model.encoder.layers.7.self_attn.out_proj.weight", `${P}transformer.resblocks.7.attn.out_proj.weight`],
    ];
    for (const [d, l] of cases) {
      assert.equal(m.map(d), l);
      assert.equal(m.unmap(l), d);
    }
    const fused = `${P}transformer.resblocks.4.attn.in_proj_weight`;
    for (const p of ["q", "k", "v"])
      assert.equal(m.map(`text_model.encoder.layers.4.self_attn.${p}_proj.weight`), fused);
    assert.deepEqual(
      m.unmapAll(fused),
      ["q", "k", "v"].map((p) => `text_model.encoder.layers.4.self_attn.${p}_proj.weight`),
    );
    assert.equal(m.unmap(fused), undefined);
    // Dropped on load: the projection, logit scale and the 24th layer SD2 does not use.
    for (const k of ["text_projection", "logit_scale", "transformer.resblocks.23.ln_1.weight"])
      assert.ok(m.isIgnoredLdm(P + k), k);
    assert.ok(!m.isIgnoredLdm(`${P}transformer.resblocks.22.ln_1.weight`));
    // 23 layers × (2 fused + 10 plain) + 4 embeddings/final norm
    assert.equal(m.entries.length, 23 * 12 + 4);
    assert.equal(m.diffusersKeys().length, 23 * 16 + 4);
    assert.equal(m.unmap("conditioner.embedders.0.model.ln_final.bias"), "text_model.final_layer_norm.bias");
  });

  test("q/k/v split and fuse round trip exactly; conv1x1 reshapes", () => {
    scope(() => {
      const m = textEncoderKeyMap({ ...TINY_TEXT, numHiddenLayers: 1 }, "openclip");
      const P = "cond_stage_model.model.";
      const ldm = new Map(
        m.entries.map((e) => {
          const n = e.transform === "qkv" ? 96 : 32;
          const shape = e.ldm.endsWith("weight") && !e.ldm.includes("ln_") ? [n, 32] : [n];
          const numel = shape.reduce((a, b) => a * b, 1);
          return [
            e.ldm,
            tensor(
              Float32Array.from({ length: numel }, (_, i) => i + e.ldm.length),
              { shape },
            ),
          ];
        }),
      );
      const d = convertStateDict(m, ldm, "diffusers");
      assert.deepEqual(d.unexpected, []);
      assert.deepEqual(d.missing, []);
      const fused = ldm.get(`${P}transformer.resblocks.0.attn.in_proj_weight`)!.toArray();
      assert.deepEqual(
        d.tensors.get("text_model.encoder.layers.0.self_attn.k_proj.weight")!.toArray(),
        fused.slice(1024, 2048),
      );
      const back = convertStateDict(m, d.tensors, "ldm");
      assert.deepEqual([...back.tensors.keys()].sort(), [...ldm.keys()].sort());
      for (const [k, t] of ldm) assert.deepEqual(back.tensors.get(k)!.toArray(), t.toArray(), k);

      const v = vaeKeyMap(TINY_VAE);
      const key = "first_stage_model.decoder.mid.attn_1.q.weight";
      const conv = tensor(
        Float32Array.from({ length: 64 * 64 }, (_, i) => i),
        { shape: [64, 64, 1, 1] },
      );
      const lin = convertStateDict(v, new Map([[key, conv]]), "diffusers").tensors.get(
        "decoder.mid_block.attentions.0.to_q.weight",
      )!;
      assert.deepEqual(lin.shape, [64, 64]);
      const again = convertStateDict(
        v,
        new Map([["decoder.mid_block.attentions.0.to_q.weight", lin]]),
        "ldm",
      ).tensors.get(key)!;
      assert.deepEqual(again.shape, [64, 64, 1, 1]);
      assert.deepEqual(again.toArray(), conv.toArray());
    });
  });

  test("general in levels and layers: 3 levels, 3 layers per block", () => {
    const c: UNetConfig = {
      ...SD15_UNET,
      layersPerBlock: 3,
      blockOutChannels: [8, 16, 16],
      downBlockTypes: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    };
    const m = unetKeyMap(c);
    const P = "model.diffusion_model.";
    assert.equal(m.map("down_blocks.1.resnets.2.conv1.weight"), `${P}input_blocks.7.0.in_layers.2.weight`);
    assert.equal(m.map("down_blocks.1.attentions.0.proj_in.weight"), `${P}input_blocks.5.1.proj_in.weight`);
    assert.equal(m.map("down_blocks.1.downsamplers.0.conv.weight"), `${P}input_blocks.8.0.op.weight`);
    assert.equal(m.map("up_blocks.0.upsamplers.0.conv.weight"), `${P}output_blocks.3.1.conv.weight`);
    assert.equal(m.map("up_blocks.1.upsamplers.0.conv.weight"), `${P}output_blocks.7.2.conv.weight`);
    assert.equal(m.map("up_blocks.2.resnets.3.conv2.bias"), `${P}output_blocks.11.0.out_layers.3.bias`);
    assert.equal(m.map("down_blocks.2.downsamplers.0.conv.weight"), undefined);
    assert.equal(m.map("down_blocks.1.resnets.0.conv_shortcut.weight"), `${P}input_blocks.5.0.skip_connection.weight`);
    assert.equal(m.map("down_blocks.2.resnets.0.conv_shortcut.weight"), undefined);
    for (const d of m.diffusersKeys()) assert.equal(m.unmap(m.map(d)!), d);
  });
});
