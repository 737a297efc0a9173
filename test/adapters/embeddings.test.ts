// Textual-inversion embeddings: A1111's .pt and the emb_params safetensors of
// the fixtures, the real-world files (loaded, or refused by name), files
// written and read back bit-exactly, the embeddings folder, and prompts whose
// words become the embedding's vectors where A1111 puts them.
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { loadEmbeddingFile, saveEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { EmbeddingDatabase, embeddingWordClash } from "../../src/adapters/embeddings.js";
import { cat, noGrad, scope, tensor } from "../../src/engine/index.js";
import { openTorchArchive } from "../../src/formats/ckpt.js";
import { TensorRef } from "../../src/formats/pickle.js";
import { encodePrompt, tokenizePrompt } from "../../src/infer/prompt-encoding.js";
import { ClipTokenizer } from "../../src/models/clip/index.js";
import { checkLeaks, repoRoot, sharedFixture, tempDir } from "../helpers.js";
import { tinyNetworks, tinyTokenizerDir } from "../tiny-model.js";

checkLeaks();

const meta = JSON.parse(readFileSync(sharedFixture("adapters/a1111_embedding_meta.json"), "utf8"));
const realworld = (p: string) => join(repoRoot, "..", "shared", "realworld", p);
const tokenizer = ClipTokenizer.fromDir(tinyTokenizerDir());

test("the fixture's A1111 .pt and emb_params safetensors give the recorded vectors and metadata exactly", () => {
  for (const [file, layout] of [
    ["a1111_embedding.pt", "a1111"],
    ["a1111_embedding.safetensors", "emb_params"],
  ]) {
    const e = loadEmbeddingFile(sharedFixture(`adapters/${file}`));
    try {
      assert.equal(e.name, "a1111_embedding");
      assert.equal(e.layout, layout);
      assert.deepEqual(e.vectors.shape, meta.shape);
      assert.deepEqual(e.vectors.toArray(), meta.values.flat());
      if (layout === "a1111") {
        assert.equal(e.step, meta.pt_metadata.step);
        assert.equal(e.sdCheckpoint, meta.pt_metadata.sd_checkpoint);
        assert.equal(e.sdCheckpointName, meta.pt_metadata.sd_checkpoint_name);
      }
    } finally {
      e.vectors.dispose();
    }
  }
});

test("embeddings written as .pt (A1111's Embedding.save layout) and .safetensors read back bit-exactly", () => {
  const dir = tempDir("emb-write-");
  const source = loadEmbeddingFile(sharedFixture("adapters/a1111_embedding.pt"));
  try {
    const pt = join(dir, "a1111_embedding.pt");
    saveEmbeddingFile(pt, source.vectors, {
      step: 500,
      sdCheckpoint: "9dcb3e3bc3",
      sdCheckpointName: "sd_tiny_ldm_single_file",
    });
    // the same object tree as the fixture: keys in A1111's order, the tensor with requires_grad
    const a = openTorchArchive(pt);
    try {
      const root = a.root as Map<string, unknown>;
      assert.deepEqual([...root.keys()], meta.pt_keys_in_order);
      assert.deepEqual(root.get("string_to_token"), new Map([["*", 265]]));
      const ref = (root.get("string_to_param") as Map<string, unknown>).get("*");
      assert.ok(ref instanceof TensorRef && ref.requiresGrad);
      assert.equal(root.get("name"), "a1111_embedding");
    } finally {
      a.close();
    }
    const st = join(dir, "other.safetensors");
    saveEmbeddingFile(st, source.vectors);
    for (const p of [pt, st]) {
      const back = loadEmbeddingFile(p);
      try {
        assert.deepEqual(back.vectors.toArray(), meta.values.flat(), p);
      } finally {
        back.vectors.dispose();
      }
    }
    assert.throws(() => saveEmbeddingFile(join(dir, "x.txt"), source.vectors), /saved as \.pt or \.safetensors/);
  } finally {
    source.vectors.dispose();
  }
});

test("the real-world embeddings load with their vector counts; broken ones are refused by name", () => {
  const cases: [string, number][] = [
    ["sd1/a1111_ti_bad-hands-5_2vec.pt", 2],
    ["sd1/a1111_ti_charturnerv2_15vec_testTurner.pt", 15],
    ["sd1/a1111_ti_negative_hand-neg_8vec.pt", 8],
    ["sd1/a1111_ti_badhandv4_6vec.pt", 6],
    ["sd1/ti_easynegative_emb_params.pt", 8],
    ["sd1/ti_easynegativev2_emb_params.safetensors", 16],
    ["sd1/cloneofsimo_kiriko2_ti_dict.pt", 1],
    ["sd1/diffusers_ti_learned_embeds_styled_image.bin", 1],
  ];
  for (const [file, vectors] of cases) {
    const e = loadEmbeddingFile(realworld(file));
    try {
      assert.deepEqual(e.vectors.shape, [vectors, 768], file);
      assert.equal(e.name, file.slice(4, file.lastIndexOf(".")));
    } finally {
      e.vectors.dispose();
    }
  }
  for (const [file, message] of [
    ["broken/easynegative_utf8_mangled_zip.pt", /end-of-central-directory/],
    ["broken/a1111_test_empty_dict.pt", /found 0 entries/],
    ["sd1/cloneofsimo_lora_disney_r1_f32_with_ti.safetensors", /not an embedding/],
  ] as const) {
    assert.throws(
      () => loadEmbeddingFile(realworld(file)),
      (e: Error) => e.message.includes(realworld(file)) && message.test(e.message),
      file,
    );
  }
});

test("an embeddings folder: stems are words; a width that does not fit and a broken file are refused by name", () => {
  const dir = tempDir("emb-dir-");
  mkdirSync(join(dir, "sub"));
  copyFileSync(sharedFixture("adapters/a1111_embedding.pt"), join(dir, "mine.pt"));
  copyFileSync(realworld("sd1/a1111_ti_bad-hands-5_2vec.pt"), join(dir, "sub", "bad-hands.pt"));
  copyFileSync(realworld("broken/easynegative_utf8_mangled_zip.pt"), join(dir, "easyneg.pt"));
  const db = new EmbeddingDatabase(tokenizer, 32);
  try {
    const r = db.loadDir(dir);
    assert.deepEqual(r.loaded, ["mine"]);
    assert.deepEqual(r.refused.map((x) => x.name).sort(), ["bad-hands", "easyneg"]);
    const bad = r.refused.find((x) => x.name === "bad-hands");
    assert.match(
      bad?.reason ?? "",
      /sub\/bad-hands\.pt: embedding width 768 does not fit this text encoder \(width 32/,
    );
    // plain prompts are unaffected; a prompt naming a refused word says why
    assert.doesNotThrow(() => tokenizePrompt(tokenizer, "a hand", { embeddings: db }));
    assert.throws(
      () => tokenizePrompt(tokenizer, "bad hands, bad-hands", { embeddings: db }),
      /uses the embedding 'bad-hands'.*sub\/bad-hands\.pt: embedding width 768/,
    );
    assert.throws(() => tokenizePrompt(tokenizer, "easyneg", { embeddings: db }), /easyneg\.pt/);
  } finally {
    db.dispose();
  }
});

test("an embedding's word becomes its vectors after BOS (A1111's EmbeddingsWithFixes), weighted like its word", () => {
  const { unet, vae, textEncoder } = tinyNetworks(3);
  unet.dispose();
  vae.dispose();
  const db = new EmbeddingDatabase(tokenizer, 32);
  try {
    const e = loadEmbeddingFile(sharedFixture("adapters/a1111_embedding.pt"));
    const vectors = e.vectors.clone();
    db.add({ ...e, name: "mine" });
    const { chunks } = tokenizePrompt(tokenizer, "a photo of (mine:1.5), red", { embeddings: db });
    const before = tokenizer.encodeTokens("a photo of");
    const after = tokenizer.encodeTokens(", red");
    const n = before.length;
    assert.deepEqual(chunks[0].tokens.slice(0, n + 4 + after.length), [tokenizer.bosId, ...before, 0, 0, 0, ...after]);
    assert.deepEqual(chunks[0].multipliers.slice(n + 1, n + 4), [1.5, 1.5, 1.5]);
    assert.deepEqual(
      chunks[0].fixes?.map((f) => f.offset),
      [n],
    );
    noGrad(() =>
      scope(() => {
        const got = encodePrompt(textEncoder, tokenizer, "a photo of mine, red", { embeddings: db });
        const ids = [tokenizer.bosId, ...before, 0, 0, 0, ...after];
        ids.push(...Array(77 - ids.length).fill(tokenizer.eosId));
        const idt = tensor(BigInt64Array.from(ids, BigInt), { shape: [1, 77] });
        const embeds = textEncoder.tokenEmbeds(idt);
        const manual = cat([embeds.narrow(1, 0, n + 1), vectors.unsqueeze(0), embeds.narrow(1, n + 4, 77 - n - 4)], 1);
        const want = textEncoder.encode(idt, { tokenEmbeds: manual });
        assert.deepEqual(got.toArray(), want.toArray());
        // and it differs from the prompt without the embedding
        const plain = encodePrompt(textEncoder, tokenizer, "a photo of mine, red");
        assert.notDeepEqual(got.toArray(), plain.toArray());
      }),
    );
    vectors.dispose();
  } finally {
    db.dispose();
    textEncoder.dispose();
  }
});

test("a word of the tokenizer's vocabulary clashes; a made-up word does not", () => {
  assert.match(
    embeddingWordClash(tokenizer, "star") ?? "",
    /is a word of the tokenizer's vocabulary.*diffusers refuses/,
  );
  assert.equal(embeddingWordClash(tokenizer, "zqxstar-emb"), undefined);
});
