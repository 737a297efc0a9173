// Fuzz target: the A1111 prompt parser (src/infer/prompt-parser.ts):
// parsePromptAttention and extractNetworks on prompts made of the syntax's
// pieces (weights, (), [], \escapes, <lora:name:w>, BREAK, AND), then
// mutated character by character. The long profile adds prompts of
// hundreds of kilobytes, which is where super-linear regexes show.
import { extractNetworks, parsePromptAttention } from "../../../src/infer/prompt-parser.js";
import type { Rng, Target } from "../harness.js";
import { costly, type TargetOptions } from "./common.js";

const PIECES = [
  "a",
  "photo",
  "of sks dog",
  "masterpiece",
  "best quality",
  "東京",
  "café",
  "😀",
  "BREAK",
  " BREAK ",
  "BREAKfast",
  "_BREAK",
  "BREAK_",
  "AND",
  " AND ",
  "(",
  ")",
  "[",
  "]",
  ":",
  ":1.2",
  ":0.5)",
  ": 1.3 )",
  ":\u30001.1\u3000)",
  "\\(",
  "\\)",
  "\\[",
  "\\]",
  "\\\\",
  "\\",
  "((",
  "))",
  "(a:1.2.3)",
  "(b:+.5)",
  "(c:-1)",
  "(d:1e3)",
  "(e:.)",
  "(f:1e309)",
  "(g:0)",
  "<lora:name:0.7>",
  "<lora:x:te=0.5:unet=1>",
  "<lora:x:abc>",
  "<hypernet:h:1>",
  "<lyco:n:1:0.5>",
  "<lora:>",
  "<:x>",
  "<lora:a=b=c>",
  "<lora:x:__proto__=1>",
  "<lora:x:te=1e999>",
  "<lora:x:1:2:3:4>",
  "<lora:<lora:x:1>>",
  " ",
  "  ",
  "\n",
  "\t",
  "\u3000",
  "\u00a0",
  "\u2028",
  "\u0085",
  ",",
  ", ",
  "\ud800",
];

/** Prompts of a size where quadratic work takes seconds (the long profile only). */
const HUGE: ((n: number) => string)[] = [
  (n) => " ".repeat(n),
  (n) => "<a:".repeat(n / 3),
  (n) => "(".repeat(n),
  (n) => "[".repeat(n / 2) + "]".repeat(n / 2),
  (n) => "\\".repeat(n),
  (n) => `:${" ".repeat(n)}1`,
  (n) => "a:1 ".repeat(n / 4),
  (n) => "BREAK ".repeat(n / 6),
];

function mutateText(rng: Rng, s: string, max: number): string {
  let t = s;
  for (let k = rng.count(4); k > 0; k--) {
    const at = rng.int(t.length + 1);
    const r = rng.int(4);
    if (r === 0) t = t.slice(0, at) + rng.pick(PIECES) + t.slice(at);
    else if (r === 1) t = t.slice(0, at) + t.slice(at + rng.range(1, 8));
    else if (r === 2 && t.length * 2 <= max)
      t = t.slice(0, at) + t.slice(at, at + rng.range(1, 64)).repeat(rng.range(2, 8)) + t.slice(at);
    else
      t =
        t.slice(0, at) +
        String.fromCharCode(rng.pick([0, 0x28, 0x29, 0x3a, 0x3c, 0x3e, 0x5b, 0x5c, 0x5d, rng.int(0x10000)])) +
        t.slice(at);
  }
  return t.slice(0, max);
}

/** The parser's own refusal: a network multiplier that is not a number. */
const isOwnError = (e: unknown) => e instanceof Error && e.constructor === Error && /is not a number$/.test(e.message);

function check(res: ReturnType<typeof parsePromptAttention>): string | undefined {
  if (!Array.isArray(res) || res.length === 0) return "no pieces";
  for (let i = 0; i < res.length; i++) {
    const [text, w] = res[i];
    if (typeof text !== "string" || typeof w !== "number") return `piece ${i} is not [text, weight]`;
    if (i > 0 && res[i - 1][1] === w) return `pieces ${i - 1} and ${i} have the same weight and were not merged`;
  }
  return undefined;
}

export function promptTarget(o: TargetOptions): Target<string> {
  const max = o.profile === "ci" ? 2048 : 8192;
  return {
    name: "prompt",
    hasReference: false,
    isOwnError,
    seeds: () => [
      "",
      "a photo of sks dog",
      "(masterpiece:1.2), best quality, [blurry], ((sharp)), \\(literal\\)",
      "a cat BREAK a dog AND a bird <lora:style:0.8> <lora:x:te=0.5:unet=1>",
      "((a:1.1):1.3) [[b]] (c:0.5) (unbalanced [open",
    ],
    generate(rng, seeds) {
      if (costly(rng, o, 1e-4)) return rng.pick(HUGE)(rng.pick([30_000, 60_000, 100_000]));
      let s = rng.chance(0.3) ? rng.pick(seeds) : "";
      if (!s || rng.chance(0.5)) {
        const parts: string[] = [s];
        for (let k = rng.count(80, 0.95); k > 0; k--) parts.push(rng.pick(PIECES));
        s = parts.join(rng.chance(0.5) ? "" : " ");
      }
      return mutateText(rng, s, max);
    },
    run(text) {
      const mismatch = check(parsePromptAttention(text));
      const { prompt, networks } = extractNetworks(text);
      for (const n of networks) {
        if (typeof n.name !== "string" || Number.isNaN(n.multiplier) || Number.isNaN(n.unetMultiplier))
          return { accepted: true, mismatch: `network ${JSON.stringify(n.name)} has a NaN multiplier` };
      }
      return { accepted: true, mismatch: mismatch ?? check(parsePromptAttention(prompt)) };
    },
    toBytes: (text) => Buffer.from(text, "utf8"),
  };
}
