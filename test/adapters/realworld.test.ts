// Every LoRA-like file of the shared real-world files (made by other tools): the LoRAs
// load, convert to kohya names and attach to a full-size SD model of their
// base; the rest (embeddings, broken files, a Flux LoRA labelled SD1.5) are
// refused with a message naming the file.
import assert from "node:assert/strict";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { LoraModule } from "../../src/adapters/lora.js";
import { disposeLoraFile, type LoraFile, loadLoraFile } from "../../src/adapters/lora-file.js";
import { LycorisModule } from "../../src/adapters/lycoris.js";
import { attachLora } from "../../src/adapters/network.js";
import { ClipTextModel, sd15TextConfig } from "../../src/models/clip/index.js";
import { UNet2DConditionModel } from "../../src/models/unet/index.js";
import { checkLeaks, repoRoot } from "../helpers.js";

checkLeaks();

const realworld = (p: string) => join(repoRoot, "..", "shared", "realworld", p);
const present = existsSync(realworld("README.md"));

// Full-size SD1.5 and an SD2.x UNet, uninitialised: attaching checks names and shapes only.
const sd1 = present
  ? {
      unet: new UNet2DConditionModel("sd15", { mode: "empty" }),
      textEncoder: new ClipTextModel(sd15TextConfig, { mode: "empty" }),
    }
  : null;
const sd2 = present ? { unet: new UNet2DConditionModel("sd21", { mode: "empty" }) } : null;
after(() => {
  sd1?.unet.dispose();
  sd1?.textEncoder.dispose();
  sd2?.unet.dispose();
});

interface Loads {
  file: string;
  format: LoraFile["format"];
  modules: number;
  te: number;
  base: "sd1" | "sd2";
  method?: "lora" | "lokr";
  ignored?: string[];
  check?: (f: LoraFile) => void;
}

const moduleNames = (f: LoraFile) => [...f.modules.keys()];

const LOADS: Loads[] = [
  {
    file: "sd1/cloneofsimo_analog_svd_r4_f16.safetensors",
    format: "cloneofsimo",
    modules: 192,
    te: 48,
    base: "sd1",
    check: (f) => {
      // cloneofsimo's order: attn1 q k v out, ff (GEGLU), attn2 q k v out per block; mid_block last; CLIP k v q out
      const names = moduleNames(f);
      assert.ok(names.includes("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"));
      assert.ok(names.includes("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"));
      assert.deepEqual(
        f.modules.get("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj")!.get("lora_up.weight")!
          .shape,
        [10240, 4],
      );
      assert.deepEqual(
        f.modules.get("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k")!.get("lora_down.weight")!
          .shape,
        [4, 768],
      );
      assert.ok(names.includes("lora_te_text_model_encoder_layers_11_self_attn_out_proj"));
      assert.equal(
        f.modules.get("lora_te_text_model_encoder_layers_0_self_attn_k_proj")!.has("alpha"),
        false,
        "scale 1",
      );
    },
  },
  {
    file: "sd1/cloneofsimo_lora_disney_r1_f32_with_ti.safetensors",
    format: "cloneofsimo",
    modules: 192,
    te: 48,
    base: "sd1",
    ignored: ["<s1>", "<s2>"],
  },
  {
    file: "sd1/cloneofsimo_lora_disney_inpainting_r1_f16_f32_mixed.safetensors",
    format: "cloneofsimo",
    modules: 192,
    te: 48,
    base: "sd1",
    ignored: ["<s1>", "<s2>"],
  },
  {
    file: "sd1/cloneofsimo_kiriko2_text_encoder_list.pt",
    format: "cloneofsimo",
    modules: 48,
    te: 48,
    base: "sd1",
    check: (f) =>
      assert.ok(moduleNames(f).every((n) => /^lora_te_text_model_encoder_layers_\d+_self_attn_[kvq]|out_proj/.test(n))),
  },
  {
    file: "sd1/diffusers_attnproc_lora_r4_weapons.safetensors",
    format: "diffusers",
    modules: 128,
    te: 0,
    base: "sd1",
    check: (f) =>
      assert.ok(moduleNames(f).includes("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0")),
  },
  { file: "sd1/diffusers_attnproc_lora_r4_weapons.bin", format: "diffusers", modules: 128, te: 0, base: "sd1" },
  { file: "sd1/diffusers_unet_dot_lora_r4_flower.safetensors", format: "diffusers", modules: 128, te: 0, base: "sd1" },
  {
    file: "sd1/peft_text_encoder_qv_r8/adapter_model.safetensors",
    format: "peft",
    modules: 24,
    te: 24,
    base: "sd1",
    check: (f) => {
      // lora_alpha 8 and r 8 from adapter_config.json: scale 1
      const m = f.modules.get("lora_te_text_model_encoder_layers_3_self_attn_v_proj")!;
      assert.equal(m.get("alpha")!.item(), 8);
      assert.deepEqual(m.get("lora_down.weight")!.shape, [8, 768]);
    },
  },
  {
    file: "sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors",
    format: "kohya",
    modules: 350,
    te: 72,
    base: "sd1",
    method: "lokr",
    check: (f) => assert.equal(f.metadata.ss_network_module, "lycoris.kohya"),
  },
  { file: "sd2/cloneofsimo_disney_unet_list_sd2.pt", format: "cloneofsimo", modules: 128, te: 0, base: "sd2" },
  {
    file: "sd2/diffusers_unet_dot_lora_r4_bf16_sd2.safetensors",
    format: "diffusers",
    modules: 128,
    te: 0,
    base: "sd2",
  },
];

for (const c of LOADS) {
  test(`loads ${c.file} (${c.format}, ${c.modules} modules) and attaches it to ${c.base === "sd1" ? "SD1.5" : "SD2.1"}`, {
    skip: !present,
  }, () => {
    const f = loadLoraFile(realworld(c.file));
    try {
      assert.equal(f.format, c.format);
      assert.equal(f.modules.size, c.modules);
      assert.equal(moduleNames(f).filter((n) => n.startsWith("lora_te_")).length, c.te);
      assert.deepEqual(f.ignored, c.ignored ?? []);
      c.check?.(f);
    } catch (e) {
      disposeLoraFile(f);
      throw e;
    }
    const model = c.base === "sd1" ? sd1! : sd2!;
    const net = attachLora(model, f, { multiplier: 0.8 });
    try {
      assert.equal(net.modules.length, c.modules);
      const kind = c.method === "lokr" ? LycorisModule : LoraModule;
      assert.ok(net.modules.every((m) => m instanceof kind && m.multiplier === 0.8));
    } finally {
      net.remove();
    }
  });
}

test("the diffusers .bin (a torch zip) reads as the same modules, keys and shapes as the .safetensors", {
  skip: !present,
}, () => {
  const a = loadLoraFile(realworld("sd1/diffusers_attnproc_lora_r4_weapons.safetensors"));
  const b = loadLoraFile(realworld("sd1/diffusers_attnproc_lora_r4_weapons.bin"));
  try {
    assert.deepEqual(moduleNames(a).sort(), moduleNames(b).sort());
    // the two blobs come from different commits of the repository: same layout, other values
    for (const [name, m] of a.modules)
      for (const [k, t] of m) assert.deepEqual(b.modules.get(name)!.get(k)!.shape, t.shape, name);
  } finally {
    disposeLoraFile(a);
    disposeLoraFile(b);
  }
});

test("an SD2 LoRA does not attach to SD1.5: the error names the file and the module", { skip: !present }, () => {
  const path = realworld("sd2/cloneofsimo_disney_unet_list_sd2.pt");
  assert.throws(
    () => attachLora(sd1!, loadLoraFile(path)),
    (e: Error) =>
      e.message.startsWith(path) && /attn2_to_k: lora_down takes 1024 inputs, the layer 768/.test(e.message),
  );
});

const REFUSED: [string, RegExp][] = [
  ["broken/easynegative_utf8_mangled_zip.pt", /end-of-central-directory|zip/],
  ["broken/a1111_test_empty_dict.pt", /holds no tensors \(an empty dict\), not a LoRA/],
  [
    "broken/handconverted_lora_unet_unet_no_alpha.safetensors",
    /malformed kohya names: .*'_lora_down\.weight' where kohya writes '\.lora_down\.weight' and doubles the 'unet' prefix/,
  ],
  [
    "other/flux_aitoolkit_lora_mislabeled_sd15.safetensors",
    /not a Stable Diffusion 1\.x\/2\.x LoRA: .*Flux.*'transformer\.single_transformer_blocks\./,
  ],
  ["sd1/cloneofsimo_kiriko2_ti_dict.pt", /textual-inversion embedding .*<krk>.*not a LoRA/],
  ["sd1/diffusers_ti_learned_embeds_styled_image.bin", /textual-inversion embedding .*<styled-image>/],
  ["sd1/a1111_ti_bad-hands-5_2vec.pt", /textual-inversion embedding \(keys: string_to_token, string_to_param/],
  ["sd1/a1111_ti_badhandv4_6vec.pt", /textual-inversion embedding/],
  ["sd1/a1111_ti_charturnerv2_15vec_testTurner.pt", /textual-inversion embedding/],
  ["sd1/a1111_ti_negative_hand-neg_8vec.pt", /textual-inversion embedding/],
  ["sd1/ti_easynegative_emb_params.pt", /textual-inversion embedding \(keys: emb_params\)/],
  ["sd1/ti_easynegativev2_emb_params.safetensors", /textual-inversion embedding \(keys: emb_params\)/],
];

for (const [file, message] of REFUSED) {
  test(`refuses ${file} with a clear message`, { skip: !present }, () => {
    const path = realworld(file);
    assert.throws(
      () => loadLoraFile(path),
      (e: Error) => {
        assert.ok(e.message.startsWith(path), `the message names the file: ${e.message}`);
        assert.match(e.message, message);
        return true;
      },
    );
  });
}

test("every file in the realworld set is covered here", { skip: !present }, () => {
  const covered = new Set([...LOADS.map((c) => c.file), ...REFUSED.map(([f]) => f)]);
  const all: string[] = [];
  for (const sub of ["sd1", "sd2", "broken", "other"])
    for (const e of readdirSync(realworld(sub))) {
      const p = `${sub}/${e}`;
      if (statSync(realworld(p)).isDirectory()) {
        for (const inner of readdirSync(realworld(p))) if (!inner.endsWith(".json")) all.push(`${p}/${inner}`);
      } else all.push(p);
    }
  assert.deepEqual(
    all.filter((f) => !covered.has(f)),
    [],
  );
});
