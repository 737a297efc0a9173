// The compatibility check and the rescue, on every file of the realworld
// corpus and on the kinds of file Atelier writes: each loadable adapter
// converts to a kohya file that the check calls loadable in A1111 and
// ComfyUI, with the same factors and scale per module as the original
// (so it generates the same); what Atelier refuses is refused here too.
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { test } from "node:test";
import { loadLoraFile } from "../../src/adapters/lora-file.js";
import { injectLora, saveLora } from "../../src/adapters/network.js";
import { disposeAll, Generator, scope, type Tensor } from "../../src/engine/index.js";
import { checkFile } from "../../src/tools/compat-check.js";
import { rescueAdapter } from "../../src/tools/rescue.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { tinyStableDiffusion } from "../tiny-model.js";

checkLeaks();

const root = join(sharedFixture(".."), "realworld");
const dir = tempDir("atelier-rescue-");
const verdict = (p: string, loader: string) => checkFile(p).loaders.find((l) => l.loader === loader)!.verdict;

const LOADABLE = [
  "sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors",
  "sd1/cloneofsimo_lora_disney_r1_f32_with_ti.safetensors",
  "sd1/cloneofsimo_lora_disney_inpainting_r1_f16_f32_mixed.safetensors",
  "sd1/cloneofsimo_analog_svd_r4_f16.safetensors",
  "sd1/cloneofsimo_kiriko2_text_encoder_list.pt",
  "sd1/diffusers_attnproc_lora_r4_weapons.safetensors",
  "sd1/diffusers_attnproc_lora_r4_weapons.bin",
  "sd1/diffusers_unet_dot_lora_r4_flower.safetensors",
  "sd1/peft_text_encoder_qv_r8",
  "sd2/cloneofsimo_disney_unet_list_sd2.pt",
  "sd2/diffusers_unet_dot_lora_r4_bf16_sd2.safetensors",
];

/** scale·factors per module: what the module adds, whatever the file's alpha convention. */
function scaled(m: Map<string, Tensor>): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const down = m.get("lora_down.weight");
  const alpha = m.get("alpha");
  const rank = down ? down.size(0) : 1;
  const scale = down && alpha ? scope(() => alpha.float().item()) / rank : 1;
  for (const [k, t] of m)
    if (k !== "alpha")
      out.set(
        k,
        scope(() =>
          t
            .float()
            .mul(k === "lora_up.weight" ? scale : 1)
            .toArray(),
        ),
      );
  return out;
}

test("every loadable realworld adapter rescues to a kohya file A1111 and ComfyUI load, with the same factors", () => {
  for (const [i, rel] of LOADABLE.entries()) {
    const input = join(root, rel);
    const out = join(dir, `${i}-${basename(rel).replace(/\.[a-z]+$/, "")}.safetensors`);
    const r = rescueAdapter(input, out);
    for (const loader of ["a1111", "comfyui", "forge"])
      assert.equal(verdict(out, loader), "loads", `${rel} in ${loader}: ${JSON.stringify(checkFile(out).loaders)}`);
    const a = loadLoraFile(input);
    const b = loadLoraFile(out);
    try {
      assert.equal(b.format, "kohya");
      assert.deepEqual([...b.modules.keys()].sort(), [...a.modules.keys()].sort(), rel);
      for (const [name, m] of a.modules) {
        const x = scaled(m);
        const y = scaled(b.modules.get(name)!);
        assert.deepEqual([...y.keys()].sort(), [...x.keys()].sort(), `${rel} ${name}`);
        for (const [k, v] of x) assert.deepEqual(y.get(k), v, `${rel} ${name}.${k}`);
      }
    } finally {
      disposeAll([a.modules, b.modules]);
    }
    if (rel.includes("with_ti")) {
      assert.deepEqual(r.embeddings.map((e) => e.token).sort(), ["<s1>", "<s2>"]);
      for (const e of r.embeddings) {
        assert.ok(existsSync(e.path));
        assert.equal(verdict(e.path, "a1111"), "loads");
        assert.equal(verdict(e.path, "comfyui"), "loads");
      }
    }
  }
});

test("the check on the originals: what each loader reads as it is, and why not", () => {
  const flower = checkFile(join(root, "sd1/diffusers_unet_dot_lora_r4_flower.safetensors"));
  assert.equal(flower.loaders.find((l) => l.loader === "a1111")!.verdict, "no-effect");
  assert.equal(flower.loaders.find((l) => l.loader === "diffusers")!.verdict, "loads");
  assert.match(
    flower.loaders.find((l) => l.loader === "a1111")!.ignored.examples[0].why,
    /names no SD 1\.x\/2\.x layer/,
  );
  const lokr = join(root, "sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors");
  assert.equal(verdict(lokr, "a1111"), "loads");
  assert.equal(verdict(lokr, "comfyui"), "loads");
  assert.equal(verdict(lokr, "diffusers"), "rejects");
  assert.equal(verdict(lokr, "kohya"), "no-effect");
  const weapons = join(root, "sd1/diffusers_attnproc_lora_r4_weapons.safetensors");
  assert.equal(verdict(weapons, "comfyui"), "loads");
  assert.equal(verdict(weapons, "a1111"), "no-effect");
  const list = checkFile(join(root, "sd1/cloneofsimo_kiriko2_text_encoder_list.pt"));
  assert.ok(list.loaders.every((l) => l.verdict === "rejects" && /list of tensors/.test(l.reason!)));
  const hand = join(root, "broken/handconverted_lora_unet_unet_no_alpha.safetensors");
  for (const l of ["a1111", "comfyui", "kohya"]) assert.equal(verdict(hand, l), "no-effect", l);
  const flux = join(root, "other/flux_aitoolkit_lora_mislabeled_sd15.safetensors");
  for (const l of ["a1111", "comfyui", "forge", "kohya"]) assert.equal(verdict(flux, l), "no-effect", l);
  assert.equal(verdict(flux, "diffusers"), "rejects");
  for (const ti of readdirSync(join(root, "sd1")).filter((f) => /_ti_|^ti_|learned_embeds/.test(f)))
    assert.equal(verdict(join(root, "sd1", ti), "a1111"), "loads", ti);
  assert.ok(checkFile(join(root, "broken/a1111_test_empty_dict.pt")).loaders.every((l) => l.verdict === "rejects"));
  assert.throws(() => checkFile(join(root, "broken/easynegative_utf8_mangled_zip.pt")), /central.directory/);
});

test("files Atelier refuses are refused by the rescue, nothing written", () => {
  for (const rel of [
    "broken/handconverted_lora_unet_unet_no_alpha.safetensors",
    "broken/easynegative_utf8_mangled_zip.pt",
    "broken/a1111_test_empty_dict.pt",
    "other/flux_aitoolkit_lora_mislabeled_sd15.safetensors",
    "sd1/ti_easynegativev2_emb_params.safetensors",
  ]) {
    const out = join(dir, "refused.safetensors");
    assert.throws(() => rescueAdapter(join(root, rel), out), Error, rel);
    assert.equal(existsSync(out), false, rel);
  }
  const input = join(root, LOADABLE[0]);
  assert.throws(() => rescueAdapter(input, input, { overwrite: true }), /is the input/);
});

test("what Atelier writes (a trained LoCon, its rescue) loads in A1111, Forge, ComfyUI and kohya's scripts", () => {
  const m = tinyStableDiffusion(3);
  const net = injectLora(m, { rank: 2, alpha: 1, convRank: 2, generator: new Generator(1) });
  const path = join(dir, "atelier-locon.safetensors");
  saveLora(path, net);
  net.remove();
  m.unet.dispose();
  m.vae.dispose();
  m.textEncoder.dispose();
  for (const l of ["a1111", "forge", "comfyui", "diffusers", "kohya"]) assert.equal(verdict(path, l), "loads", l);
});
