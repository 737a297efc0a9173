// transformers' CLIPTextModel on the tiny fixture: last_hidden_state, pooler_output
// and every hidden state (the shared fixtures' models/text_encoder_tiny*.safetensors),
// key names of the presets, clip skip, and the ignored position_ids key.
import assert from "node:assert/strict";
import { test } from "node:test";
import { arange, disposeAll, layerNorm, noGrad, scope, type Tensor } from "../../src/engine/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import {
  ClipTextModel,
  clipTextConfigFromJson,
  loadClipTextModel,
  POSITION_IDS_KEY,
  sd15TextConfig,
  sd21TextConfig,
  tinyTextConfig,
} from "../../src/models/clip/text-encoder.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const WEIGHTS = sharedFixture("models/text_encoder_tiny.safetensors");
const IO = sharedFixture("models/text_encoder_tiny_io.safetensors");
// README "Tolerances": |a−b| ≤ 1e-5 + 1e-4·|b| for tiny CLIP outputs in f32
const TOL = { atol: 1e-5, rtol: 1e-4 };

function withFixture(fn: (model: ClipTextModel, io: Map<string, Tensor>) => void): void {
  const model = loadClipTextModel(WEIGHTS, tinyTextConfig);
  const io = loadSafetensors(IO).tensors;
  try {
    noGrad(() => scope(() => fn(model, io)));
  } finally {
    model.dispose();
    disposeAll(io);
  }
}

test("last_hidden_state, pooler_output and hidden_states 0..2 equal transformers'", () => {
  withFixture((model, io) => {
    const out = model.forward(io.get("in.input_ids")!, { outputHiddenStates: true });
    assertClose(out.lastHiddenState, io.get("out.last_hidden_state")!, { ...TOL, what: "last_hidden_state" });
    assertClose(out.lastHiddenState, io.get("out.last_hidden_state_f64")!, { ...TOL, what: "vs f64" });
    assertClose(out.pooled, io.get("out.pooler_output")!, { ...TOL, what: "pooler_output" });
    assert.equal(out.hiddenStates?.length, 3);
    for (let i = 0; i < 3; i++) {
      assertClose(out.hiddenStates![i], io.get(`out.hidden_states.${i}`)!, { ...TOL, what: `hidden_states.${i}` });
    }
    // without outputHiddenStates: the same result, no hidden states
    const plain = model.forward(io.get("in.input_ids")!);
    assert.equal(plain.hiddenStates, undefined);
    assertClose(plain.lastHiddenState, out.lastHiddenState, { atol: 0, rtol: 0 });
  });
});

test("pooled is the hidden state at the first EOS (argmax of the ids)", () => {
  withFixture((model, io) => {
    const ids = io.get("in.input_ids")!;
    const out = model.forward(ids);
    const rows = ids.toArray();
    for (let b = 0; b < 2; b++) {
      const row = rows.slice(b * 77, (b + 1) * 77);
      const firstEos = row.indexOf(999);
      assert.ok(firstEos === 8 || firstEos === 31, `EOS at ${firstEos}`);
      assertClose(out.pooled.select(0, b), out.lastHiddenState.select(0, b).select(0, firstEos), { atol: 0, rtol: 0 });
    }
  });
});

test("clip skip N = final_layer_norm(hidden_states[-N]), computing only the layers needed", () => {
  withFixture((model, io) => {
    const ids = io.get("in.input_ids")!;
    const sd = model.stateDict();
    const finalLn = (h: Tensor) =>
      layerNorm(
        h,
        [32],
        sd.get("text_model.final_layer_norm.weight"),
        sd.get("text_model.final_layer_norm.bias"),
        1e-5,
      );
    assertClose(model.encode(ids), io.get("out.last_hidden_state")!, { ...TOL, what: "clip skip 1" });
    assertClose(model.encode(ids, { clipSkip: 2 }), finalLn(io.get("out.hidden_states.1")!), {
      ...TOL,
      what: "skip 2",
    });
    assertClose(model.encode(ids, { clipSkip: 3 }), finalLn(io.get("out.hidden_states.0")!), {
      ...TOL,
      what: "skip 3",
    });
    assert.throws(() => model.encode(ids, { clipSkip: 4 }), /clip skip must be an integer in 1..3/);
    assert.throws(() => model.encode(ids, { clipSkip: 0 }), /clip skip/);
  });
});

test("token embeddings can stand in for the ids (textual inversion)", () => {
  withFixture((model, io) => {
    const ids = io.get("in.input_ids")!;
    const embeds = model.tokenEmbeds(ids);
    const out = model.forward(ids, { tokenEmbeds: embeds });
    assertClose(out.lastHiddenState, io.get("out.last_hidden_state")!, TOL);
    // shorter inputs use positions 0..L-1
    const short = model.forward(ids.narrow(1, 0, 9));
    assert.deepEqual(short.lastHiddenState.shape, [2, 9, 32]);
    assertClose(short.lastHiddenState, io.get("out.last_hidden_state")!.narrow(1, 0, 9), TOL);
  });
});

test("parameter keys are transformers' keys; the presets have the reference sizes", () => {
  const tiny = new ClipTextModel(tinyTextConfig, { mode: "empty" });
  const keys = [...tiny.namedParameters().keys()];
  assert.equal(keys.length, 36);
  assert.equal(tiny.parameterCount(), 48106);
  for (const k of [
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.encoder.layers.1.self_attn.q_proj.weight",
    "text_model.encoder.layers.1.self_attn.out_proj.bias",
    "text_model.encoder.layers.0.layer_norm1.weight",
    "text_model.encoder.layers.0.layer_norm2.bias",
    "text_model.encoder.layers.0.mlp.fc1.weight",
    "text_model.encoder.layers.0.mlp.fc2.bias",
    "text_model.final_layer_norm.weight",
  ]) {
    assert.ok(keys.includes(k), k);
  }
  tiny.dispose();
  // sd15 parameter count: the shared fixtures' models/models_meta.json, sd15_param_counts.text_encoder
  const count = (c: typeof sd15TextConfig) => {
    const h = c.hiddenSize;
    const i = c.intermediateSize;
    const layer = 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h);
    return c.vocabSize * h + c.maxPositions * h + c.numLayers * layer + 2 * h;
  };
  assert.equal(count(sd15TextConfig), 123060480);
  assert.equal(count(tinyTextConfig), 48106);
  assert.equal(sd21TextConfig.hiddenSize / sd21TextConfig.numHeads, 64);
});

test("config.json of transformers maps to the config", () => {
  const c = clipTextConfigFromJson({
    vocab_size: 49408,
    hidden_size: 1024,
    intermediate_size: 4096,
    num_hidden_layers: 23,
    num_attention_heads: 16,
    max_position_embeddings: 77,
    hidden_act: "gelu",
    layer_norm_eps: 1e-5,
  });
  assert.deepEqual(c, sd21TextConfig);
  assert.throws(() => clipTextConfigFromJson({ hidden_act: "relu" }), /hidden_act 'relu'/);
});

test("text_model.embeddings.position_ids is ignored; other extra keys are errors", () => {
  const { tensors } = loadSafetensors(WEIGHTS);
  const withPos = new Map(tensors);
  withPos.set(
    POSITION_IDS_KEY,
    scope(() => arange(77).unsqueeze(0)),
  );
  const model = loadClipTextModel(withPos, tinyTextConfig);
  model.dispose();
  withPos.set("text_model.extra", arange(3));
  assert.throws(() => loadClipTextModel(withPos, tinyTextConfig), /unexpected keys \(1\): text_model.extra/);
  // a prefixed (LDM single-file) layout
  const prefixed = new Map([...tensors].map(([k, t]) => [`cond_stage_model.transformer.${k}`, t]));
  const fromPrefixed = loadClipTextModel(prefixed, tinyTextConfig, { prefix: "cond_stage_model.transformer." });
  fromPrefixed.dispose();
  disposeAll(withPos);
});

test("the LDM single-file checkpoint's text encoder gives the same output", () => {
  const model = loadClipTextModel(sharedFixture("models/sd_tiny_ldm_single_file.safetensors"), tinyTextConfig, {
    prefix: "cond_stage_model.transformer.",
  });
  const io = loadSafetensors(IO).tensors;
  noGrad(() =>
    scope(() => {
      assertClose(model.forward(io.get("in.input_ids")!).lastHiddenState, io.get("out.last_hidden_state")!, TOL);
    }),
  );
  model.dispose();
  disposeAll(io);
});

test("gradients flow to the parameters (text-encoder training)", () => {
  const model = loadClipTextModel(WEIGHTS, tinyTextConfig);
  const io = loadSafetensors(IO).tensors;
  scope(() => {
    const loss = model.forward(io.get("in.input_ids")!).lastHiddenState.square().mean();
    loss.backward();
    const g = model.stateDict().get("text_model.encoder.layers.0.self_attn.q_proj.weight")!.grad!;
    assert.ok(g.abs().sum().item() > 0);
    g.dispose();
  });
  model.dispose();
  disposeAll(io);
});
