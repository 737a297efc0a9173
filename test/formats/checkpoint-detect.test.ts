// What a checkpoint is (SD1/SD2, epsilon/v, its configs) and how bad input is
// refused: truncated and corrupt files, files that are not SD checkpoints
// (the shared real-world files), incomplete state dicts, and failed saves.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { disposeAll, scope, type Tensor } from "../../src/engine/index.js";
import { CheckpointError, loadCheckpoint, saveCheckpoint } from "../../src/formats/checkpoint.js";
import { predictionFromYaml, vPredictionByNormStd } from "../../src/formats/checkpoint-detect.js";
import { loadSafetensors, saveSafetensors } from "../../src/formats/safetensors.js";
import { checkLeaks, repoRoot, tempDir } from "../helpers.js";
import {
  assertSameTensors,
  ckptBytes,
  ckptWithOptimizer,
  disposeComponents,
  TINY_CONFIGS,
  TINY_LDM,
  tinyComponents,
} from "./checkpoint-fixtures.js";

checkLeaks();

const dir = tempDir("atelier-detect-");
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const tmp = (name: string) => join(dir, `${n++}-${name}`);
const realworld = (p: string) => join(repoRoot, "..", "shared", "realworld", p);

/** An error of class CheckpointError-or-format-error whose message names `path` and matches `re`. */
function refuses(path: string, re: RegExp, o = {}) {
  assert.throws(
    () => {
      const r = loadCheckpoint(path, o);
      disposeComponents(r.components);
    },
    (e: Error) => {
      if (process.env.SHOW_ERRORS) console.log(e.message);
      return e.message.includes(path) && re.test(e.message);
    },
  );
}

describe("SD2 single files (OpenCLIP text tower)", () => {
  const sd2 = tmp("tiny-sd2.safetensors");
  const c = tinyComponents();
  saveCheckpoint(c, sd2, { layout: "ldm", configs: { ...TINY_CONFIGS, textLayout: "openclip" } });
  disposeComponents(c);

  test("written with fused in_proj, read back exactly, detected as SD2", () => {
    const keys = Object.keys(
      JSON.parse(
        readFileSync(sd2)
          .subarray(8, 8 + Number(readFileSync(sd2).readBigUInt64LE(0)))
          .toString(),
      ),
    );
    assert.ok(keys.includes("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"));
    assert.ok(keys.includes("cond_stage_model.model.positional_embedding"));
    assert.ok(!keys.some((k) => k.startsWith("cond_stage_model.transformer.")));
    const ref = tinyComponents();
    const { components, info } = loadCheckpoint(sd2);
    try {
      for (const k of ["unet", "vae", "textEncoder"] as const) assertSameTensors(components[k]!, ref[k], k);
      assert.equal(info.version, "sd2");
      assert.match(info.versionReason, /OpenCLIP/);
      assert.equal(info.configs.textLayout, "openclip");
      assert.equal(info.configs.textEncoder.hiddenAct, "gelu");
      // Keys alone cannot tell 768-v from 512-base: the reason says which rule decided.
      assert.match(info.predictionReason, /SD2 heuristic \(ComfyUI\)/);
    } finally {
      disposeComponents(ref);
      disposeComponents(components);
    }
  });

  test("OpenCLIP extras are dropped: text_projection, logit_scale, the unused last layer", () => {
    const p = tmp("sd2-extras.safetensors");
    const t = loadSafetensors(sd2).tensors;
    const extra = scope(() => {
      const w = t.get("cond_stage_model.model.ln_final.weight")!;
      return new Map<string, Tensor>([
        ["cond_stage_model.model.text_projection", w.unsqueeze(0).expand(32, 32).contiguous()],
        ["cond_stage_model.model.logit_scale", w.narrow(0, 0, 1).squeeze()],
      ]);
    });
    try {
      saveSafetensors(p, new Map([...t, ...extra]));
    } finally {
      disposeAll([t, extra]);
    }
    const { components, info } = loadCheckpoint(p, {
      components: ["textEncoder"],
      overrides: { textEncoder: { numHiddenLayers: 1 } },
    });
    try {
      assert.equal(components.textEncoder!.has("text_model.encoder.layers.1.mlp.fc1.weight"), false);
      for (const k of ["text_projection", "logit_scale", "transformer.resblocks.1.ln_1.weight"]) {
        assert.ok(info.ignoredKeys.includes(`cond_stage_model.model.${k}`), k);
      }
    } finally {
      disposeComponents(components);
    }
  });

  test("prediction type: caller, file metadata, yaml, global_step, heuristic", () => {
    const check = (path: string, o: object, type: string, reason: RegExp) => {
      const r = loadCheckpoint(path, { components: ["vae"], ...o });
      disposeComponents(r.components);
      assert.equal(r.info.predictionType, type);
      assert.match(r.info.predictionReason, reason);
    };
    check(sd2, { predictionType: "epsilon" }, "epsilon", /given by the caller/);
    const withYaml = tmp("sd2-v.safetensors");
    copyFileSync(sd2, withYaml);
    writeFileSync(withYaml.replace(/safetensors$/, "yaml"), "model:\n  params:\n    parameterization: v # 768-v\n");
    check(withYaml, {}, "v_prediction", /parameterization in .*sd2-v\.yaml/);
    const meta = tmp("sd2-meta.safetensors");
    const t = loadSafetensors(sd2).tensors;
    try {
      saveSafetensors(meta, t, { "modelspec.architecture": "stable-diffusion-v2-768-v" });
    } finally {
      disposeAll(t);
    }
    check(meta, {}, "v_prediction", /modelspec\.architecture/);
    // A .ckpt of the 512-base release says global_step 875000 (diffusers convert_from_ckpt.py).
    const base = tmp("sd2-base.ckpt");
    const t2 = loadSafetensors(sd2).tensors;
    try {
      writeFileSync(base, ckptBytes(t2, { global_step: 875000 }));
    } finally {
      disposeAll(t2);
    }
    check(base, {}, "epsilon", /global_step 875000/);
  });

  test("the helpers behind the heuristics", () => {
    assert.equal(predictionFromYaml('  parameterization: "eps"\n'), "epsilon");
    assert.equal(predictionFromYaml("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"), undefined);
    assert.deepEqual(vPredictionByNormStd([0.1, -0.1]), { v: true, std: 0.1 });
    assert.equal(vPredictionByNormStd([0.01, -0.01, 0.02]).v, false);
  });
});

describe("SD1 from the UNet alone", () => {
  test("a UNet-only file: version from the cross-attention width", () => {
    const p = tmp("unet-only.safetensors");
    const t = loadSafetensors(TINY_LDM, { filter: (k) => k.startsWith("model.diffusion_model.") });
    try {
      saveSafetensors(p, t.tensors);
    } finally {
      disposeAll(t.tensors);
    }
    refuses(p, /has no VAE weights; pass `components`/);
    const { components, info } = loadCheckpoint(p, { components: ["unet"] });
    disposeComponents(components);
    assert.equal(info.version, "sd1");
    assert.match(info.versionReason, /cross-attention width is 32, not 1024/);
  });
});

describe("bad input is refused with the file's name", () => {
  test("truncated and corrupt single files", () => {
    const bytes = readFileSync(TINY_LDM);
    for (const keep of [bytes.length - 1, Math.floor(bytes.length / 2), 200, 12]) {
      const p = tmp("cut.safetensors");
      writeFileSync(p, bytes.subarray(0, keep));
      refuses(p, /./);
    }
    const bad = Buffer.from(bytes);
    bad.write("}}}}", 40);
    const p = tmp("corrupt-header.safetensors");
    writeFileSync(p, bad);
    refuses(p, /./);
    const junk = tmp("junk.ckpt");
    writeFileSync(junk, "PK\u0003\u0004 not really a zip");
    refuses(junk, /end-of-central-directory|truncated/);
    const text = tmp("text.safetensors");
    writeFileSync(text, "hello");
    refuses(text, /neither a safetensors file nor a PyTorch/);
    refuses(join(dir, "does-not-exist.ckpt"), /no such file or folder/);
  });

  test("a truncated .ckpt", () => {
    const t = loadSafetensors(TINY_LDM).tensors;
    const p = tmp("tiny.ckpt");
    try {
      const bytes = ckptBytes(t);
      writeFileSync(p, bytes.subarray(0, bytes.length - 30));
    } finally {
      disposeAll(t);
    }
    refuses(p, /end-of-central-directory|truncated/);
  });

  test("tensors outside the state dict (optimizer state) are not read", () => {
    const t = loadSafetensors(TINY_LDM).tensors;
    const p = tmp("with-optimizer.ckpt");
    try {
      const extra = new Map([["momentum", t.get("model.diffusion_model.out.2.bias")!]]);
      writeFileSync(p, ckptWithOptimizer(t, extra));
    } finally {
      disposeAll(t);
    }
    const r = loadCheckpoint(p);
    disposeComponents(r.components);
    assert.deepEqual(r.info.metadata, { global_step: 875000 });
  });

  test("missing and unexpected keys inside a component", () => {
    const t = loadSafetensors(TINY_LDM).tensors;
    const lacking = tmp("lacking.safetensors");
    const extra = tmp("extra.safetensors");
    try {
      saveSafetensors(lacking, new Map([...t].filter(([k]) => k !== "model.diffusion_model.out.2.bias")));
      saveSafetensors(
        extra,
        new Map([...t, ["model.diffusion_model.foo.weight", t.get("model.diffusion_model.out.2.bias")!]]),
      );
    } finally {
      disposeAll(t);
    }
    refuses(lacking, /the UNet lacks 1 key: model\.diffusion_model\.out\.2\.bias/);
    refuses(extra, /the UNet has unexpected 1 key: model\.diffusion_model\.foo\.weight; pass strict: false/);
    const r = loadCheckpoint(extra, { strict: false });
    disposeComponents(r.components);
    assert.ok(r.info.notes.some((s) => s.includes("model.diffusion_model.foo.weight")));
  });

  test("SDXL keys are refused", () => {
    const p = tmp("sdxl.safetensors");
    const t = loadSafetensors(TINY_LDM, { filter: (k) => k.endsWith("out.2.bias") }).tensors;
    try {
      saveSafetensors(p, new Map([...t, ["conditioner.embedders.1.model.ln_final.weight", [...t.values()][0]]]));
    } finally {
      disposeAll(t);
    }
    refuses(p, /SDXL/);
  });

  test("a diffusers folder without a component's config", () => {
    const out = tmp("pipe-broken");
    const c = tinyComponents();
    try {
      saveCheckpoint(c, out, { layout: "diffusers" });
    } finally {
      disposeComponents(c);
    }
    rmSync(join(out, "vae", "config.json"));
    refuses(out, /no vae\/config\.json/);
    const r = loadCheckpoint(out, { components: ["unet", "textEncoder"] });
    disposeComponents(r.components);
    writeFileSync(join(out, "unet", "config.json"), "{ not json");
    refuses(out, /unet\/config\.json: not valid JSON/, { components: ["unet"] });
  });

  test("failed saves leave nothing behind", () => {
    const c = tinyComponents();
    try {
      const lacking = { ...c, unet: new Map([...c.unet].filter(([k]) => k !== "conv_out.bias")) };
      const p = tmp("never.safetensors");
      assert.throws(
        () => saveCheckpoint(lacking, p, { layout: "ldm", configs: TINY_CONFIGS }),
        /cannot save the UNet: it lacks 1 key: conv_out\.bias/,
      );
      assert.ok(!existsSync(p));
      const folder = tmp("never-pipe");
      assert.throws(
        () => saveCheckpoint(lacking, folder, { layout: "diffusers", configs: TINY_CONFIGS }),
        /lacks 1 key/,
      );
      assert.ok(!existsSync(folder));
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.includes(".tmp-")),
        [],
      );
      assert.throws(() => saveCheckpoint(c, tmp("x.ckpt"), { layout: "ldm" }), /written as \.safetensors only/);
      assert.throws(() => saveCheckpoint({}, tmp("y.safetensors"), { layout: "ldm" }), CheckpointError);
    } finally {
      disposeComponents(c);
    }
  });
});

describe("files from other tools are not SD checkpoints (the shared real-world files)", () => {
  const cases: [string, RegExp][] = [
    ["sd1/lycoris_lokr_d4_smart_falcon_kohya.safetensors", /LoRA \/ LyCORIS/],
    ["sd1/diffusers_unet_dot_lora_r4_flower.safetensors", /LoRA \/ LyCORIS/],
    ["broken/handconverted_lora_unet_unet_no_alpha.safetensors", /LoRA \/ LyCORIS/],
    ["sd1/ti_easynegativev2_emb_params.safetensors", /not a Stable Diffusion checkpoint/],
    // Its metadata claims sd_1.5; the keys decide.
    ["other/flux_aitoolkit_lora_mislabeled_sd15.safetensors", /not a Stable Diffusion checkpoint/],
    ["sd1/diffusers_attnproc_lora_r4_weapons.bin", /not a Stable Diffusion checkpoint/],
    ["sd1/a1111_ti_bad-hands-5_2vec.pt", /not a Stable Diffusion checkpoint: .*entries: "name", "step"/],
    ["broken/a1111_test_empty_dict.pt", /not a Stable Diffusion checkpoint: .*nothing in it/],
    ["broken/easynegative_utf8_mangled_zip.pt", /central directory|end-of-central-directory|corrupt/],
    ["sd1/cloneofsimo_kiriko2_text_encoder_list.pt", /holds a list, not a state dict/],
  ];
  for (const [f, re] of cases) test(f, () => refuses(realworld(f), re));
});
