// A1111 prompt syntax: parse_prompt_attention's doctests, BREAK, 75-token chunks
// with the comma backtrack, <lora:…> extraction, and the emphasis / clip skip math
// on the tiny text encoder, each checked against an independent computation.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { noGrad, scope, type Tensor, tensor } from "../../src/engine/index.js";
import {
  applyEmphasis,
  CHUNK_LENGTH,
  encodePrompt,
  encodePrompts,
  tokenizePrompt,
} from "../../src/infer/prompt-encoding.js";
import { extractNetworks, parsePromptAttention } from "../../src/infer/prompt-parser.js";
import { loadClipTextModel, tinyTextConfig } from "../../src/models/clip/text-encoder.js";
import { ClipTokenizer } from "../../src/models/clip/tokenizer.js";
import { assertClose, checkLeaks, sharedFixture } from "../helpers.js";

checkLeaks();

const sd1 = ClipTokenizer.fromDir(sharedFixture("tokenizer"));
const [BOS, EOS, A, B, COMMA] = [49406, 49407, 320, 321, 267];

describe("parsePromptAttention: the doctests of prompt_parser.py", () => {
  const cases: [string, [string, number][]][] = [
    ["normal text", [["normal text", 1.0]]],
    [
      "an (important) word",
      [
        ["an ", 1.0],
        ["important", 1.1],
        [" word", 1.0],
      ],
    ],
    ["(unbalanced", [["unbalanced", 1.1]]],
    ["\\(literal\\]", [["(literal]", 1.0]]],
    ["(unnecessary)(parens)", [["unnecessaryparens", 1.1]]],
    [
      "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
      [
        ["a ", 1.0],
        ["house", 1.5730000000000004],
        [" ", 1.1],
        ["on", 1.0],
        [" a ", 1.1],
        ["hill", 0.55],
        [", sun, ", 1.1],
        ["sky", 1.4641000000000006],
        [".", 1.1],
      ],
    ],
  ];
  for (const [input, expected] of cases) {
    test(JSON.stringify(input), () => assert.deepEqual(parsePromptAttention(input), expected));
  }
});

test("parsePromptAttention: square brackets, spaces in weights, escapes, BREAK", () => {
  assert.deepEqual(parsePromptAttention("[a] b"), [
    ["a", 1 / 1.1],
    [" b", 1.0],
  ]);
  assert.deepEqual(parsePromptAttention("[[a]]"), [["a", 1 / 1.1 / 1.1]]);
  assert.deepEqual(parsePromptAttention("(a : 1.3 ) b"), [
    ["a ", 1.3],
    [" b", 1.0],
  ]);
  assert.deepEqual(parsePromptAttention("(a:-0.5)"), [["a", -0.5]]);
  assert.deepEqual(parsePromptAttention("a \\\\ b \\) c"), [["a \\ b ) c", 1.0]]);
  assert.deepEqual(parsePromptAttention("x: y"), [["x: y", 1.0]]);
  assert.deepEqual(parsePromptAttention(""), [["", 1.0]]);
  assert.deepEqual(parsePromptAttention("a cat BREAK a dog"), [
    ["a cat", 1.0],
    ["BREAK", -1],
    ["a dog", 1.0],
  ]);
  assert.deepEqual(parsePromptAttention("BREAKFAST BREAK\nend"), [
    ["BREAKFAST", 1.0],
    ["BREAK", -1],
    ["end", 1.0],
  ]);
  assert.deepEqual(parsePromptAttention("(a BREAK b)"), [
    ["a", 1.1],
    ["BREAK", -1.1],
    ["b", 1.1],
  ]);
  // A1111's float() would raise on "1.2.3"; here it stays text
  assert.deepEqual(parsePromptAttention("(a:1.2.3)"), [["a:1.2.3)", 1.1]]);
});

test("extractNetworks: <lora:…> and <hypernet:…> are removed and listed", () => {
  const r = extractNetworks(
    "a <lora:myLora:0.7>, b <hypernet:h:1.1> <lora:x:0.5:0.25> <lora:y:te=0.3:unet=0.6> <lora:z> <not a net>",
  );
  assert.equal(r.prompt, "a , b     <not a net>");
  assert.deepEqual(
    r.networks.map(({ kind, name, multiplier, unetMultiplier }) => ({ kind, name, multiplier, unetMultiplier })),
    [
      { kind: "lora", name: "myLora", multiplier: 0.7, unetMultiplier: 0.7 },
      { kind: "hypernet", name: "h", multiplier: 1.1, unetMultiplier: 1.1 },
      { kind: "lora", name: "x", multiplier: 0.5, unetMultiplier: 0.25 },
      { kind: "lora", name: "y", multiplier: 0.3, unetMultiplier: 0.6 },
      { kind: "lora", name: "z", multiplier: 1, unetMultiplier: 1 },
    ],
  );
  assert.deepEqual(r.networks[3].named, { te: "0.3", unet: "0.6" });
  assert.deepEqual(r.networks[2].args, ["x", "0.5", "0.25"]);
  assert.throws(() => extractNetworks("<lora:x:strong>"), /<lora:x:strong>: multiplier 'strong' is not a number/);
});

// ---- chunks ------------------------------------------------------------------------

const words = (w: string, n: number) => Array(n).fill(w).join(" ");

test("a short prompt is one chunk: BOS, tokens with their weights, EOS padding", () => {
  const { chunks, tokenCount } = tokenizePrompt(sd1, "a (b:1.5) a");
  assert.equal(chunks.length, 1);
  assert.equal(tokenCount, 3);
  const [c] = chunks;
  assert.equal(c.tokens.length, CHUNK_LENGTH + 2);
  assert.deepEqual(c.tokens.slice(0, 5), [BOS, A, B, A, EOS]);
  assert.ok(c.tokens.slice(4).every((t) => t === EOS));
  assert.deepEqual(c.multipliers.slice(0, 5), [1, 1, 1.5, 1, 1]);
  assert.ok(c.multipliers.slice(4).every((m) => m === 1));
  // the empty prompt: one chunk of BOS + EOS
  const empty = tokenizePrompt(sd1, "");
  assert.equal(empty.chunks.length, 1);
  assert.deepEqual(empty.chunks[0].tokens, [BOS, ...Array(76).fill(EOS)]);
  assert.equal(empty.tokenCount, 0);
  // emphasis "none": brackets are text
  const plain = tokenizePrompt(sd1, "(b:1.5)", { emphasis: "none" });
  const literal = sd1.encodeTokens("(b:1.5)");
  assert.equal(literal.length, 7);
  assert.deepEqual(plain.chunks[0].tokens.slice(0, 9), [BOS, ...literal, EOS]);
  assert.ok(plain.chunks[0].multipliers.every((m) => m === 1));
});

test("BREAK ends the current chunk", () => {
  const { chunks, tokenCount } = tokenizePrompt(sd1, "a b BREAK b a");
  assert.equal(chunks.length, 2);
  assert.deepEqual(chunks[0].tokens.slice(0, 4), [BOS, A, B, EOS]);
  assert.deepEqual(chunks[1].tokens.slice(0, 4), [BOS, B, A, EOS]);
  assert.equal(tokenCount, 75 + 2);
  for (const c of chunks) assert.equal(c.tokens.length, 77);
});

test("over 75 tokens: 75-token chunks, each BOS + 75 + EOS", () => {
  const { chunks, tokenCount } = tokenizePrompt(sd1, words("a", 100));
  assert.equal(chunks.length, 2);
  assert.deepEqual(chunks[0].tokens, [BOS, ...Array(75).fill(A), EOS]);
  assert.deepEqual(chunks[1].tokens, [BOS, ...Array(25).fill(A), ...Array(51).fill(EOS)]);
  assert.equal(tokenCount, 100);
  assert.equal(tokenizePrompt(sd1, words("a", 150)).chunks.length, 2);
  assert.equal(tokenizePrompt(sd1, words("a", 151)).chunks.length, 3);
});

test("comma backtrack: text after a comma within the last 20 tokens moves to the next chunk", () => {
  // 70 a, a comma (position 70), 10 b: the chunk is full at 75 with the comma 5 back
  const near = tokenizePrompt(sd1, `${words("a", 70)}, ${words("b", 10)}`);
  assert.deepEqual(near.chunks[0].tokens, [BOS, ...Array(70).fill(A), COMMA, ...Array(5).fill(EOS)]);
  assert.deepEqual(near.chunks[1].tokens, [BOS, ...Array(10).fill(B), ...Array(66).fill(EOS)]);
  // the comma 25 tokens back: too far, the chunk is cut at 75
  const far = tokenizePrompt(sd1, `${words("a", 50)}, ${words("b", 40)}`);
  assert.deepEqual(far.chunks[0].tokens, [BOS, ...Array(50).fill(A), COMMA, ...Array(24).fill(B), EOS]);
  assert.deepEqual(far.chunks[1].tokens.slice(0, 18), [BOS, ...Array(16).fill(B), EOS]);
  // exactly 20 back still moves; commaBacktrack 0 turns it off
  const twenty = tokenizePrompt(sd1, `${words("a", 55)}, ${words("b", 30)}`);
  assert.deepEqual(twenty.chunks[0].tokens.slice(55, 58), [A, COMMA, EOS]);
  const off = tokenizePrompt(sd1, `${words("a", 70)}, ${words("b", 10)}`, { commaBacktrack: 0 });
  assert.deepEqual(off.chunks[0].tokens, [BOS, ...Array(70).fill(A), COMMA, ...Array(4).fill(B), EOS]);
  // the weights travel with the moved tokens
  const weighted = tokenizePrompt(sd1, `${words("a", 70)}, (${words("b", 10)}:1.2)`);
  assert.deepEqual(weighted.chunks[1].multipliers.slice(0, 12), [1, ...Array(10).fill(1.2), 1]);
});

test("the fixture's A1111 syntax prompt, after extracting its <lora:…>", () => {
  const { prompt, networks } = extractNetworks("a (cute:1.2) dog, (fluffy fur:0.8), <lora:myLora:0.7>, BREAK sunset");
  assert.deepEqual(
    networks.map((n) => [n.name, n.multiplier]),
    [["myLora", 0.7]],
  );
  const { chunks } = tokenizePrompt(sd1, prompt);
  assert.equal(chunks.length, 2);
  const ids = (t: string) => sd1.encodeTokens(t);
  const first = [...ids("a"), ...ids("cute"), ...ids("dog, "), ...ids("fluffy fur"), ...ids(", ,")];
  assert.deepEqual(chunks[0].tokens.slice(0, first.length + 2), [BOS, ...first, EOS]);
  assert.deepEqual(chunks[0].multipliers.slice(1, first.length + 1), [1, 1.2, 1, 1, 0.8, 0.8, 1, 1]);
  assert.deepEqual(chunks[1].tokens.slice(0, 3), [BOS, ...ids("sunset"), EOS]);
});

// ---- encoding with the tiny text encoder --------------------------------------------

// A tokenizer whose ids fit the tiny encoder (vocab 1000, BOS 997, EOS 999 as in the
// fixture): bytes 0..255, bytes + "</w>" 256..511, no merges, so each character is a token.
function tinyTokenizer(): ClipTokenizer {
  const vocab = new Map<string, number>();
  const chars: string[] = [];
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars.push(printable ? String.fromCharCode(b) : "");
  }
  let n = 0;
  for (let b = 0; b < 256; b++) if (!chars[b]) chars[b] = String.fromCharCode(256 + n++);
  chars.forEach((c, i) => {
    vocab.set(c, i);
    vocab.set(`${c}</w>`, 256 + i);
  });
  vocab.set("<|startoftext|>", 997);
  vocab.set("<|endoftext|>", 999);
  return new ClipTokenizer(vocab, []);
}

const tiny = tinyTokenizer();

function withModel(fn: (model: ReturnType<typeof loadClipTextModel>) => void): void {
  const model = loadClipTextModel(sharedFixture("models/text_encoder_tiny.safetensors"), tinyTextConfig);
  try {
    noGrad(() => scope(() => fn(model)));
  } finally {
    model.dispose();
  }
}

const idsTensor = (ids: number[]) => tensor(BigInt64Array.from(ids, BigInt), { shape: [1, ids.length] });

test("emphasis: (word:1.5) = the unweighted output × weights, rescaled to the same mean", () => {
  withModel((model) => {
    const prompt = "a (cat:1.5) [sat]";
    const [chunk] = tokenizePrompt(tiny, prompt).chunks;
    const w = chunk.multipliers;
    assert.deepEqual(w.slice(0, 10), [1, 1, 1.5, 1.5, 1.5, 1 / 1.1, 1 / 1.1, 1 / 1.1, 1, 1]);
    const unweighted = model.encode(idsTensor(chunk.tokens));
    // the same ids, without any bracket, in "ignore" mode
    assertClose(encodePrompt(model, tiny, prompt, { emphasis: "ignore" }), unweighted, { atol: 0, rtol: 0 });
    // by hand, in float64: z·w, then × mean(z) / mean(z·w)
    const z = unweighted.toArray();
    const H = 32;
    const zw = z.map((v, i) => v * w[Math.floor(i / H)]);
    const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
    const ratio = mean(z) / mean(zw);
    const expected = zw.map((v) => v * ratio);
    const got = encodePrompt(model, tiny, prompt);
    assert.deepEqual(got.shape, [1, 77, 32]);
    assertClose(got, expected, { atol: 1e-5, rtol: 1e-4 });
    assert.ok(Math.abs(ratio - 1) > 1e-3, "the rescale is not trivial here");
    assertClose(encodePrompt(model, tiny, prompt, { emphasis: "no-norm" }), zw, { atol: 1e-6, rtol: 1e-5 });
    // applyEmphasis on its own
    const multipliers = tensor(Float32Array.from(w), { shape: [1, 77] });
    assertClose(applyEmphasis(unweighted, multipliers), expected, { atol: 1e-5, rtol: 1e-4 });
  });
});

test("emphasis: a weighted mean of exactly 0 leaves the weighted z unscaled, never NaN", () => {
  scope(() => {
    // Every row has mean 0 (as an untrained CLIP's final layer norm gives); weights 2 and 1 keep it 0.
    const z = tensor(Float32Array.from([1, -1, 3, -3]), { shape: [1, 2, 2] });
    const m = tensor(Float32Array.from([2, 1]), { shape: [1, 2] });
    assert.deepEqual(applyEmphasis(z, m).toArray(), [2, -2, 3, -3]);
  });
});

test("clip skip 2 = final_layer_norm(hidden_states[-2]) of the same chunk", () => {
  withModel((model) => {
    const prompt = "a cat";
    const [chunk] = tokenizePrompt(tiny, prompt).chunks;
    const out = model.forward(idsTensor(chunk.tokens), { outputHiddenStates: true });
    const hs = out.hiddenStates as Tensor[];
    const expected = model.finalLayerNorm(hs[hs.length - 2]);
    assertClose(encodePrompt(model, tiny, prompt, { clipSkip: 2 }), expected, { atol: 1e-6, rtol: 1e-5 });
    assertClose(encodePrompt(model, tiny, prompt), out.lastHiddenState, { atol: 1e-6, rtol: 1e-5 });
  });
});

test("long prompts: chunks encoded one by one and concatenated along the tokens", () => {
  withModel((model) => {
    const prompt = `${"ab ".repeat(30)}BREAK x, y`;
    const { chunks } = tokenizePrompt(tiny, prompt);
    assert.equal(chunks.length, 2);
    const cond = encodePrompt(model, tiny, prompt);
    assert.deepEqual(cond.shape, [1, 154, 32]);
    chunks.forEach((c, i) => {
      assertClose(cond.narrow(1, 77 * i, 77), model.encode(idsTensor(c.tokens)), { atol: 1e-6, rtol: 1e-5 });
    });
  });
});

test("SD2 padding: ids after the first EOS become padId", () => {
  withModel((model) => {
    const [chunk] = tokenizePrompt(tiny, "a cat").chunks;
    const firstEos = chunk.tokens.indexOf(999);
    const padded = chunk.tokens.map((t, i) => (i > firstEos ? 0 : t));
    const expected = model.encode(idsTensor(padded));
    assertClose(encodePrompt(model, tiny, "a cat", { padId: 0 }), expected, { atol: 1e-6, rtol: 1e-5 });
  });
});

test("a batch of prompts: the shorter ones repeat their last vector (stack_conds)", () => {
  withModel((model) => {
    const long = "ab ".repeat(40);
    const batch = encodePrompts(model, tiny, ["a cat", long]);
    assert.deepEqual(batch.shape, [2, 154, 32]);
    const short = encodePrompt(model, tiny, "a cat");
    assertClose(batch.select(0, 0).narrow(0, 0, 77), short.select(0, 0), { atol: 0, rtol: 0 });
    const last = short.select(0, 0).select(0, 76);
    for (const pos of [77, 100, 153]) assertClose(batch.select(0, 0).select(0, pos), last, { atol: 0, rtol: 0 });
    assertClose(batch.select(0, 1), encodePrompt(model, tiny, long).select(0, 0), { atol: 0, rtol: 0 });
  });
});

test("BREAK splitting drops only the whitespace beside each BREAK, and long runs of spaces stay linear (the fuzzer's 11 s case)", () => {
  assert.deepEqual(parsePromptAttention("a   BREAK   b BREAK BREAK c "), [
    ["a", 1],
    ["BREAK", -1],
    ["b", 1],
    ["BREAK", -1],
    ["", 1],
    ["BREAK", -1],
    ["c ", 1],
  ]);
  const spaces = " ".repeat(100_000);
  assert.deepEqual(parsePromptAttention(spaces), [[spaces, 1]]);
  assert.deepEqual(parsePromptAttention(`${spaces}x BREAK y`), [
    [`${spaces}x`, 1],
    ["BREAK", -1],
    ["y", 1],
  ]);
});
