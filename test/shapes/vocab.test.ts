// The shapes world's own CLIP BPE vocabulary: BPE training, CLIP's id layout,
// the tokenizer folder it writes, and ClipTokenizer on it (every world word one
// token, unseen words as bytes, EOS padding to 77).
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { BOS_TOKEN, ClipTokenizer, EOS_TOKEN } from "../../src/models/clip/tokenizer.js";
import {
  baseVocabulary,
  clipByteSymbols,
  DREAMBOOTH_IDENTIFIERS,
  mergesTxt,
  trainBpe,
  vocabJson,
  wordCounts,
  worldBpe,
  worldCorpus,
  writeTokenizerFiles,
} from "../../src/shapes/vocab.js";
import { COLOURS, caption, type Scene, SHAPES } from "../../src/shapes/world.js";
import { sharedFixture, tempDir } from "../helpers.js";

const tmp = tempDir("atelier-vocab-");
after(() => rmSync(tmp, { recursive: true, force: true }));

const corpus = worldCorpus();
const bpe = worldBpe();
const dir = join(tmp, "tokenizer");
writeTokenizerFiles(dir, bpe);
const tok = ClipTokenizer.fromDir(dir);
const worldWords = [...new Set(corpus.flatMap((c) => c.split(" ")))].sort();

test("the base vocabulary is CLIP's: the first 512 ids of the real vocab.json", () => {
  const clip: Record<string, number> = JSON.parse(readFileSync(sharedFixture("tokenizer/vocab.json"), "utf8"));
  const base = baseVocabulary();
  assert.equal(base.length, 512);
  assert.equal(new Set(base).size, 512);
  base.forEach((t, i) => {
    assert.equal(clip[t], i, `${JSON.stringify(t)}`);
  });
  assert.equal(clipByteSymbols()[188], "Ā");
  assert.equal(base[256], "!</w>");
});

test("the world vocabulary: a few hundred tokens, merges after the 512 byte tokens, specials last", () => {
  const size = bpe.vocab.size;
  console.log(`world vocabulary: ${size} tokens (${bpe.merges.length} merges), ${corpus.length} captions`);
  assert.ok(size > 512 && size < 1000, `size ${size}`);
  assert.equal(tok.vocabSize, size);
  assert.equal(tok.bosId, size - 2);
  assert.equal(tok.eosId, size - 1);
  assert.equal(bpe.vocab.get(BOS_TOKEN), size - 2);
  assert.equal(bpe.vocab.get(EOS_TOKEN), size - 1);
  const ids = [...bpe.vocab.values()].sort((a, b) => a - b);
  assert.deepEqual(
    ids,
    Array.from({ length: size }, (_, i) => i),
  );
  // each merge's result has the next id (this corpus has no merge that rebuilds an existing token)
  bpe.merges.forEach(([a, b], i) => {
    assert.equal(bpe.vocab.get(a + b), 512 + i);
  });
});

test("the world corpus: every shape, colour, pattern form and drop option, each caption once", () => {
  assert.equal(new Set(corpus).size, corpus.length);
  assert.deepEqual(worldCorpus(), corpus);
  for (const c of [
    "a red star on a blue background",
    "an orange square",
    "a circle on an orange background",
    "a triangle",
    "a yellow star with a red dot on a green background",
    "a star with a red dot",
    "a purple and green triangle on an orange background",
    "an orange and red circle",
  ]) {
    assert.ok(corpus.includes(c), c);
  }
  for (const w of [...SHAPES, ...COLOURS, "a", "an", "on", "background", "with", "dot", "and"]) {
    assert.ok(worldWords.includes(w), w);
  }
  assert.equal(worldWords.length, SHAPES.length + COLOURS.length + 7);
  assert.ok(!corpus.some((c) => c.includes("sks")));
});

test("every world caption: BOS, one token per word, EOS, and decodes back", () => {
  for (const text of corpus) {
    const words = text.split(" ");
    const ids = tok.encode(text);
    assert.equal(ids.length, words.length + 2, text);
    assert.equal(ids[0], tok.bosId);
    assert.equal(ids.at(-1), tok.eosId);
    words.forEach((w, i) => {
      assert.equal(ids[i + 1], tok.tokenId(`${w}</w>`), `${text}: ${w}`);
    });
    assert.equal(tok.decode(ids.slice(1, -1)).trim(), text);
  }
  for (const w of worldWords) assert.deepEqual(tok.tokenize(w), [`${w}</w>`]);
  // case and spacing are normalised as CLIP does
  assert.deepEqual(tok.encode("  A  Red STAR "), tok.encode("a red star"));
});

test("the Dreambooth identifiers are single tokens; a Dreambooth caption is one token a word", () => {
  for (const w of DREAMBOOTH_IDENTIFIERS) assert.deepEqual(tok.tokenize(w), [`${w}</w>`]);
  const scene: Scene = {
    shape: "star",
    colour: "yellow",
    background: "green",
    cx: 32,
    cy: 32,
    size: 40,
    rotation: 0,
    imageSize: 64,
  };
  const text = caption(scene, { token: "sks" });
  assert.equal(text, "a sks star on a green background");
  assert.equal(tok.encode(text).length, text.split(" ").length + 2);
  // without them as extra words "sks" is split
  const plain = trainBpe(corpus);
  assert.equal(plain.vocab.has("sks</w>"), false);
  assert.ok(
    new ClipTokenizer(
      plain.vocab,
      plain.merges.map((m) => m.join(" ")),
    ).tokenize("sks").length > 1,
  );
});

test("unseen words and any text tokenize, to byte symbols the vocabulary has", () => {
  for (const text of ["zebra", "héllo", "a red zebra on a 🦓 background!", "日本語", "x\u0000y", "<|endoftext|> ok"]) {
    const toks = tok.tokenize(text);
    assert.ok(toks.length > 0, text);
    for (const t of toks) assert.notEqual(tok.tokenId(t), undefined, `${text}: ${JSON.stringify(t)}`);
  }
  assert.ok(tok.tokenize("zebra").length > 1);
  // "é" is two UTF-8 bytes, each its own byte symbol
  const hello = tok.tokenize("héllo");
  assert.ok(hello.length >= 3, hello.join(" "));
  assert.ok(hello.includes("Ã") || hello.some((t) => t.includes("Ã©")), hello.join(" "));
  assert.equal(
    tok
      .decode(tok.encode("héllo zebra"))
      .replace(/<\|\w+\|>/g, "")
      .trim(),
    "héllo zebra",
  );
});

test("encodePadded: 77 ids, padded with EOS (SD1), or with a given pad id; attention mask", () => {
  const text = "a yellow star with a red dot on a green background";
  const ids = tok.encodePadded(text);
  assert.equal(ids.length, 77);
  const n = text.split(" ").length + 2;
  assert.deepEqual(ids.slice(0, n), tok.encode(text));
  assert.ok(ids.slice(n).every((id) => id === tok.eosId));
  assert.ok(ids.every((id) => id >= 0 && id < tok.vocabSize));
  const pad0 = tok.encodePadded(text, 77, 0);
  assert.ok(pad0.slice(n).every((id) => id === 0));
  const mask = tok.attentionMask(text);
  assert.equal(mask.length, 77);
  assert.equal(
    mask.reduce((a, b) => a + b, 0),
    n,
  );
  // a long text keeps BOS, 75 tokens and EOS
  const long = tok.encodePadded(Array(60).fill("red star").join(" "));
  assert.equal(long.length, 77);
  assert.equal(long[0], tok.bosId);
  assert.equal(long[76], tok.eosId);
});

test("training is deterministic and independent of the corpus order: identical files", () => {
  const again = join(tmp, "again");
  writeTokenizerFiles(again, worldBpe());
  const reversed = join(tmp, "reversed");
  writeTokenizerFiles(reversed, trainBpe([...corpus].reverse(), { extraWords: [...DREAMBOOTH_IDENTIFIERS].reverse() }));
  for (const f of ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]) {
    const a = readFileSync(join(dir, f));
    assert.ok(a.equals(readFileSync(join(again, f))), f);
    assert.ok(a.equals(readFileSync(join(reversed, f))), f);
  }
});

test("the files are in the CLIP / transformers format", () => {
  const merges = readFileSync(join(dir, "merges.txt"), "utf8");
  assert.ok(merges.startsWith("#version: 0.2\n"));
  assert.ok(merges.endsWith("\n"));
  const lines = merges.split("\n").slice(1, -1);
  assert.equal(lines.length, bpe.merges.length);
  for (const l of lines) assert.match(l, /^\S+ \S+$/);
  assert.equal(merges, mergesTxt(bpe));

  const vocabText = readFileSync(join(dir, "vocab.json"), "utf8");
  assert.equal(vocabText, vocabJson(bpe));
  assert.ok(vocabText.startsWith('{"!": 0, "\\"": 1, "#": 2,'));
  assert.ok(vocabText.includes('"Ā": 188'));
  // in id order in the file (JSON.parse would list the digit keys "0"…"9" first)
  const fileIds = [...vocabText.matchAll(/": (\d+)[,}]/g)].map((m) => Number(m[1]));
  assert.deepEqual(
    fileIds,
    Array.from({ length: bpe.vocab.size }, (_, i) => i),
  );
  const vocab: Record<string, number> = JSON.parse(vocabText);
  assert.deepEqual(new Map(Object.entries(vocab)), bpe.vocab);

  const config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  assert.equal(config.tokenizer_class, "CLIPTokenizer");
  assert.equal(config.model_max_length, 77);
  assert.equal(config.pad_token, EOS_TOKEN);
  assert.equal(config.bos_token, BOS_TOKEN);
  assert.equal(config.eos_token, EOS_TOKEN);
  assert.equal(config.added_tokens_decoder[String(tok.bosId)].content, BOS_TOKEN);
  assert.equal(config.added_tokens_decoder[String(tok.eosId)].content, EOS_TOKEN);
  const special = JSON.parse(readFileSync(join(dir, "special_tokens_map.json"), "utf8"));
  assert.equal(special.bos_token.content, BOS_TOKEN);
  assert.equal(special.eos_token.content, EOS_TOKEN);
  assert.equal(special.pad_token, EOS_TOKEN);
});

test("BPE: most frequent pair first, ties to the smaller pair, merges as the tokenizer applies them", () => {
  // a a a b</w>: (a, a) ×2 → "aa a b</w>"; then (aa, a) and (a, b</w>) tie → (a, b</w>); then the rest
  const small = trainBpe(["aaab"]);
  assert.deepEqual(small.merges, [
    ["a", "a"],
    ["a", "b</w>"],
    ["aa", "ab</w>"],
  ]);
  assert.equal(small.vocab.size, 512 + 3 + 2);
  // counts are per occurrence; extra words count once
  assert.deepEqual(
    [...wordCounts(["The cat, the CAT."])],
    [
      ["t h e</w>", 2],
      ["c a t</w>", 2],
      [",</w>", 1],
      [".</w>", 1],
    ],
  );
  assert.deepEqual(trainBpe(["ab ab cd"], { maxMerges: 1 }).merges, [["a", "b</w>"]]);
  assert.deepEqual(trainBpe(["ab"], { maxMerges: 0 }).merges, []);
  assert.throws(() => trainBpe(["ab"], { maxMerges: -1 }), /maxMerges/);
  // stops once every word is one token, even with room for more merges
  const capped = trainBpe(corpus, { maxMerges: 10 });
  assert.equal(capped.merges.length, 10);
  assert.deepEqual(capped.merges, bpe.merges.slice(0, 10));
  assert.equal(capped.vocab.size, 512 + 10 + 2);
});

test("repetitive words (overlapping pairs merge left to right): contiguous ids, every word one token", () => {
  const b = trainBpe(["aaaaaaa aaaaa aaaa aaa aa"]);
  const ids = [...b.vocab.values()].sort((x, y) => x - y);
  assert.deepEqual(
    ids,
    Array.from({ length: b.vocab.size }, (_, i) => i),
  );
  const t = new ClipTokenizer(
    b.vocab,
    b.merges.map((m) => m.join(" ")),
  );
  for (const w of ["aaaaaaa", "aaaaa", "aaaa", "aaa", "aa"]) assert.deepEqual(t.tokenize(w), [`${w}</w>`]);
});
