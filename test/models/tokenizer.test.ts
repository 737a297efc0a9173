// The CLIP tokenizer against transformers' CLIPTokenizer / openai's SimpleTokenizer
// ids (the shared fixtures' tokenizer/tokenizer_cases.json), its text cleaning, and
// the order in which a tokenizer folder is found.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { cleanText, fixText, htmlUnescape } from "../../src/models/clip/text-clean.js";
import { ClipTokenizer, findTokenizer, hubCacheDir } from "../../src/models/clip/tokenizer.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";

checkLeaks();

interface Case {
  text: string;
  ids_unpadded: number[];
  input_ids_77: number[];
  input_ids_77_pad0: number[];
  attention_mask_77: number[];
  tokens: string[];
  truncated: boolean;
  ftfy_changes_text: boolean;
}

const dir = sharedFixture("tokenizer");
const cases: Case[] = JSON.parse(readFileSync(join(dir, "tokenizer_cases.json"), "utf8")).cases;
const tok = ClipTokenizer.fromDir(dir);

test("vocabulary: 49408 tokens, BOS 49406, EOS 49407", () => {
  assert.equal(tok.vocabSize, 49408);
  assert.equal(tok.bosId, 49406);
  assert.equal(tok.eosId, 49407);
  assert.equal(tok.tokenId(",</w>"), 267);
});

describe("every fixture prompt gives the reference ids", () => {
  assert.equal(cases.length, 40);
  // all 40 match, the 4 that need ftfy (fullwidth, ligatures, mojibake, control characters) included
  for (const c of cases) {
    const name = `${JSON.stringify(c.text).slice(0, 60)}${c.ftfy_changes_text ? " (ftfy)" : ""}`;
    test(name, () => {
      const inner = c.ids_unpadded.slice(1, -1);
      assert.deepEqual(tok.tokenize(c.text), c.tokens.slice(1, -1), "BPE strings");
      assert.deepEqual(tok.encode(c.text), c.ids_unpadded, "unpadded");
      assert.deepEqual(tok.encodeTokens(c.text), inner, "without BOS/EOS");
      assert.deepEqual(tok.encodePadded(c.text), c.input_ids_77, "padded with EOS");
      assert.deepEqual(tok.encodePadded(c.text, 77, 49407), c.input_ids_77, "padded with 49407");
      assert.deepEqual(tok.encodePadded(c.text, 77, 0), c.input_ids_77_pad0, "padded with 0");
      assert.deepEqual(tok.attentionMask(c.text), c.attention_mask_77, "attention mask");
      assert.equal(c.ids_unpadded.length > 77, c.truncated);
    });
  }
});

test("truncation keeps BOS, the first 75 ids and EOS", () => {
  const long = cases.filter((c) => c.truncated);
  assert.ok(long.length >= 3);
  for (const c of long) {
    const ids = tok.encodePadded(c.text);
    assert.equal(ids.length, 77);
    assert.deepEqual(ids, [49406, ...c.ids_unpadded.slice(1, 76), 49407]);
  }
});

test("decode inverts encode up to cleaning", () => {
  assert.equal(tok.decode(tok.encodeTokens("A photo of a CAT, naïve 東京")), "a photo of a cat , naïve 東京 ");
});

test("cleaning: ftfy subset, html.unescape twice, whitespace, lowercase", () => {
  assert.equal(fixText("ｆｕｌｌ\u3000ＡＢＣ"), "full ABC");
  assert.equal(fixText("ﬁne ﬂow"), "fine flow");
  assert.equal(fixText("cafÃ© naÃ¯ve"), "café naïve");
  assert.equal(fixText("This â€” is an em dash"), "This — is an em dash");
  assert.equal(fixText("naïve café Zürich"), "naïve café Zürich", "correct Latin-1 text stays");
  assert.equal(fixText("a\x07b\x1b[31mc\x1b[0m"), "abc");
  assert.equal(fixText("\u201cquoted\u201d \u2018x\u2019"), "\"quoted\" 'x'");
  assert.equal(fixText("e\u0301"), "é", "NFC");
  assert.equal(
    htmlUnescape("&amp;lt; &#39; &#x41; &eacute; &ampx &nbsp;&copy &bogus; &#128;"),
    "&lt; ' A é &x \xa0© &bogus; €",
  );
  assert.equal(htmlUnescape("&#0; &#x110000; &#1;"), "\ufffd \ufffd ");
  assert.equal(cleanText("  Two\t\tWords\u00a0HERE \n"), "two words here");
  assert.equal(cleanText("&amp;amp;amp;"), "&", "ftfy unescapes until stable, then html.unescape twice");
  assert.equal(cleanText("<b> &amp;amp;amp;"), "<b> &amp;", "with '<' ftfy leaves entities alone");
});

// ---- lookup order ---------------------------------------------------------------

describe("findTokenizer", () => {
  const root = tempDir("atelier-tok-");
  after(() => rmSync(root, { recursive: true, force: true }));
  const makeTokenizerDir = (path: string) => {
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, "vocab.json"), "{}");
    writeFileSync(join(path, "merges.txt"), "#version: 0.2\n");
    return path;
  };
  const explicit = makeTokenizerDir(join(root, "explicit"));
  const model = join(root, "model");
  const modelTok = makeTokenizerDir(join(model, "tokenizer"));
  const envDir = makeTokenizerDir(join(root, "env"));
  const hfHome = join(root, "hf");
  const snap = (repo: string, rev: string) =>
    join(hfHome, "hub", `models--${repo.replace("/", "--")}`, "snapshots", rev);
  const sd1Snap = makeTokenizerDir(snap("openai/clip-vit-large-patch14", "aaa"));
  makeTokenizerDir(snap("openai/clip-vit-large-patch14", "zzz"));
  mkdirSync(join(hfHome, "hub", "models--openai--clip-vit-large-patch14", "refs"), { recursive: true });
  writeFileSync(join(hfHome, "hub", "models--openai--clip-vit-large-patch14", "refs", "main"), "zzz");
  const sd2Snap = makeTokenizerDir(join(snap("stabilityai/stable-diffusion-2-1", "bbb"), "tokenizer"));
  const env = { ATELIER_TOKENIZER: envDir, HF_HOME: hfHome };
  const home = join(root, "home");

  test("explicit folder first, then the model's tokenizer/, then env, then the hub cache", () => {
    assert.deepEqual(findTokenizer({ tokenizerDir: explicit, modelDir: model, kind: "sd1", env, home }), {
      dir: explicit,
      source: "option",
    });
    assert.deepEqual(findTokenizer({ tokenizerDir: model, kind: "sd1", env, home }), {
      dir: modelTok,
      source: "option",
    });
    assert.deepEqual(findTokenizer({ modelDir: model, kind: "sd1", env, home }), { dir: modelTok, source: "model" });
    assert.deepEqual(findTokenizer({ modelDir: join(root, "explicit", "none"), kind: "sd1", env, home }), {
      dir: envDir,
      source: "env",
    });
    const hubOnly = { HF_HOME: hfHome };
    const sd1 = findTokenizer({ kind: "sd1", env: hubOnly, home });
    assert.deepEqual(sd1, { dir: sd1Snap.replace("aaa", "zzz"), source: "hub-cache" }, "refs/main's snapshot first");
    assert.deepEqual(findTokenizer({ kind: "sd2", env: hubOnly, home }), { dir: sd2Snap, source: "hub-cache" });
  });

  test("the hub cache: HF_HUB_CACHE, HF_HOME/hub, else ~/.cache/huggingface/hub", () => {
    assert.equal(hubCacheDir({ HF_HUB_CACHE: "/x" }, "/h"), "/x");
    assert.equal(hubCacheDir({ HF_HOME: "/y" }, "/h"), join("/y", "hub"));
    assert.equal(hubCacheDir({}, "/h"), join("/h", ".cache", "huggingface", "hub"));
    const fakeHome = join(root, "fakehome");
    const cached = makeTokenizerDir(
      join(fakeHome, ".cache", "huggingface", "hub", "models--openai--clip-vit-large-patch14", "snapshots", "r1"),
    );
    assert.deepEqual(findTokenizer({ kind: "sd1", env: {}, home: fakeHome }), { dir: cached, source: "hub-cache" });
  });

  test("a wrong explicit folder is an error, not a fallback", () => {
    assert.throws(
      () => findTokenizer({ tokenizerDir: join(root, "missing"), kind: "sd1", env, home }),
      /--tokenizer .*missing: no vocab.json \+ merges.txt/,
    );
    assert.throws(
      () => findTokenizer({ kind: "sd1", env: { ATELIER_TOKENIZER: join(root, "nope") }, home }),
      /ATELIER_TOKENIZER=.*nope: no vocab.json/,
    );
  });

  test("nothing found: the error says how to provide one", () => {
    const empty = { HF_HOME: join(root, "empty-hf") };
    for (const kind of ["sd1", "sd2"] as const) {
      assert.throws(
        () => findTokenizer({ modelDir: join(root, "nomodel"), kind, env: empty, home }),
        (e: Error) => {
          assert.match(e.message, new RegExp(`no CLIP tokenizer \\(${kind}\\) found`));
          assert.match(e.message, /never downloads/);
          assert.match(e.message, /--tokenizer DIR/);
          assert.match(e.message, /tokenizer\/ subfolder/);
          assert.match(e.message, /ATELIER_TOKENIZER=DIR/);
          assert.ok(e.message.includes(join(root, "empty-hf", "hub")), "names the cache folder");
          assert.match(
            e.message,
            kind === "sd1" ? /openai\/clip-vit-large-patch14/ : /stabilityai\/stable-diffusion-2-1/,
          );
          return true;
        },
      );
    }
  });
});
