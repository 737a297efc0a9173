// Forge's own rules in the compatibility check, where they differ from
// ComfyUI's (src/tools/compat-rules.ts, read from lllyasviel/
// stable-diffusion-webui-forge extensions-builtin/sd_forge_lora/networks.py and
// packages_3rdparty/comfyui_lora_collection/lora.py): over 12 unmatched keys
// refuse the whole file, no `lycoris_` prefix, no `.reshape_weight` part.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { ones, scope, type Tensor, zeros } from "../../src/engine/index.js";
import { saveSafetensors } from "../../src/formats/safetensors.js";
import { checkFile } from "../../src/tools/compat-check.js";
import { checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-forge-");
const ATTN = "down_blocks_0_attentions_0_transformer_blocks_0_attn1";

/** A kohya-style file: one LoRA module per name, plus extra keys. */
function write(name: string, modules: string[], extra: string[] = [], parts = ["lora_up.weight", "lora_down.weight"]) {
  const path = join(dir, `${name}.safetensors`);
  scope(() => {
    const t = new Map<string, Tensor>();
    for (const m of modules) {
      for (const p of parts) t.set(`${m}.${p}`, zeros([2, 2]));
      t.set(`${m}.alpha`, ones([]));
    }
    for (const k of extra) t.set(k, zeros([2]));
    saveSafetensors(path, t);
  });
  return path;
}

const verdicts = (p: string) => Object.fromEntries(checkFile(p).loaders.map((l) => [l.loader, l]));

test("over 12 unmatched keys: Forge refuses the whole file (LoRA version mismatch), ComfyUI loads the rest", () => {
  const junk = Array.from({ length: 13 }, (_, i) => `lora_unet_not_a_layer_${i}.lora_up.weight`);
  const p = write("junk13", [`lora_unet_${ATTN}_to_q`, `lora_unet_${ATTN}_to_k`], junk);
  const v = verdicts(p);
  assert.equal(v.comfyui.verdict, "loads-partly");
  assert.equal(v.comfyui.modules, 2);
  assert.equal(v.forge.verdict, "rejects");
  assert.equal(v.forge.modules, 0);
  assert.match(v.forge.reason!, /LoRA version mismatch: 13 keys unmatched, over its limit of 12/);
  // at the limit Forge loads what it matched, as ComfyUI
  const p12 = write("junk12", [`lora_unet_${ATTN}_to_q`], junk.slice(0, 12));
  const v12 = verdicts(p12);
  assert.equal(v12.forge.verdict, "loads-partly");
  assert.equal(v12.forge.ignored.count, 12);
  assert.equal(v12.comfyui.verdict, "loads-partly");
});

test("A1111's bundled embeddings: A1111 takes them, Forge counts them unmatched", () => {
  const emb = Array.from({ length: 13 }, (_, i) => `bundle_emb.tok${i}.string_to_param.*`);
  const p = write("bundle", [`lora_unet_${ATTN}_to_q`], emb);
  const v = verdicts(p);
  assert.equal(v.a1111.verdict, "loads");
  assert.equal(v.forge.verdict, "rejects");
});

test("the lycoris_ prefix (SimpleTuner): ComfyUI maps it, Forge's older copy does not", () => {
  const p = write("lycoris", [`lycoris_${ATTN}_to_q`, `lycoris_${ATTN}_to_v`]);
  const v = verdicts(p);
  assert.equal(v.comfyui.verdict, "loads");
  assert.equal(v.forge.verdict, "no-effect");
  assert.match(v.forge.ignored.examples[0].why, /names no SD 1\.x\/2\.x layer/);
});

test(".reshape_weight: a LoRA part ComfyUI reads and Forge leaves unmatched", () => {
  const p = write("reshape", [`lora_unet_${ATTN}_to_q`], [`lora_unet_${ATTN}_to_q.reshape_weight`]);
  const v = verdicts(p);
  assert.equal(v.comfyui.verdict, "loads");
  assert.equal(v.forge.verdict, "loads-partly");
  assert.equal(v.forge.ignored.count, 1);
});

test("a plain kohya LoRA: the same verdict in Forge and ComfyUI", () => {
  const p = write("plain", [`lora_unet_${ATTN}_to_q`, "lora_te_text_model_encoder_layers_0_self_attn_q_proj"]);
  const v = verdicts(p);
  assert.equal(v.forge.verdict, "loads");
  assert.equal(v.comfyui.verdict, "loads");
  assert.equal(v.forge.modules, 2);
});
