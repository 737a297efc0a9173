// AUTOMATIC1111's prompt syntax, as text: attention weights and BREAK
// (AUTOMATIC1111/stable-diffusion-webui modules/prompt_parser.py,
// parse_prompt_attention) and extra networks such as <lora:name:0.7>
// (modules/extra_networks.py, parse_prompt; extensions-builtin/Lora/extra_networks_lora.py).

/** A piece of prompt text and its attention weight; BREAK is ["BREAK", -1]. */
export type WeightedText = [text: string, weight: number];

// Python's `\s` (str.isspace()), as prompt_parser.py's regexes see it.
const S = "[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

// prompt_parser.py re_attention, alternative for alternative.
const RE_ATTENTION = new RegExp(
  [
    "\\\\\\(",
    "\\\\\\)",
    "\\\\\\[",
    "\\\\\\]",
    "\\\\\\\\",
    "\\\\",
    "\\(",
    "\\[",
    `:${S}*([+-]?[.0-9]+)${S}*\\)`,
    "\\)",
    "\\]",
    "[^\\\\()\\[\\]:]+",
    ":",
  ].join("|"),
  "g",
);

// re_break = \s*\bBREAK\b\s* ; Python's \b is Unicode-aware, hence the lookarounds. The whitespace
// around it is trimmed after splitting: a leading \s* in the pattern is quadratic on long runs of spaces.
const RE_BREAK = /(?<![\p{L}\p{N}_])BREAK(?![\p{L}\p{N}_])/u;
const LEADING_SPACE = new RegExp(`^${S}+`, "u");
const TRAILING_SPACE = new RegExp(`${S}+$`, "u");

/** `text` split at BREAK with the whitespace around each BREAK dropped, as re.split(re_break, text). */
function splitBreak(text: string): string[] {
  if (!text.includes("BREAK")) return [text];
  const parts = text.split(RE_BREAK);
  return parts.map((p, i) => {
    let q = i > 0 ? p.replace(LEADING_SPACE, "") : p;
    if (i < parts.length - 1) q = trimEnd(q);
    return q;
  });
}

/** Drops trailing whitespace in linear time (a `\s+$` search from every position would be quadratic). */
function trimEnd(text: string): string {
  let end = text.length;
  while (end > 0 && TRAILING_SPACE.test(text[end - 1])) end--;
  return text.slice(0, end);
}

export const ROUND_MULTIPLIER = 1.1;
export const SQUARE_MULTIPLIER = 1 / 1.1;

/**
 * Splits a prompt into [text, weight] pairs: `(a)` ×1.1, `[a]` ÷1.1,
 * `(a:1.3)` ×1.3, nested brackets multiply, unbalanced ones apply to the end,
 * `\(` `\)` `\[` `\]` `\\` are literal, `BREAK` gives ["BREAK", -1], and
 * neighbours of equal weight merge. The multiplications happen in A1111's
 * order, so weights equal its floats exactly (1.1·1.1·1.3 → 1.5730000000000004).
 *
 * One difference: a weight A1111's float() rejects ("(a:1.2.3)") raises there;
 * here the ":1.2.3)" is kept as text.
 */
export function parsePromptAttention(text: string): WeightedText[] {
  // Texts and weights in two arrays: a plain array of doubles multiplies in
  // place, where [text, weight] pairs box every product (A1111 multiplies
  // each range element by element, quadratic in nested brackets: 33,000
  // "(a" then 33,000 ")" took 41 s with pairs, under 1 s like this).
  const texts: string[] = [];
  const weights: number[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, multiplier: number) => {
    for (let p = start; p < weights.length; p++) weights[p] *= multiplier;
  };
  const push = (t: string, w: number) => {
    texts.push(t);
    weights.push(w);
  };

  for (const m of text.matchAll(RE_ATTENTION)) {
    const t = m[0];
    const weight = m[1] === undefined ? undefined : pyFloat(m[1]);
    if (t.startsWith("\\")) {
      push(t.slice(1), 1.0);
    } else if (t === "(") {
      round.push(texts.length);
    } else if (t === "[") {
      square.push(texts.length);
    } else if (weight !== undefined && !Number.isNaN(weight) && round.length > 0) {
      multiplyRange(round.pop()!, weight);
    } else if (t === ")" && round.length > 0) {
      multiplyRange(round.pop()!, ROUND_MULTIPLIER);
    } else if (t === "]" && square.length > 0) {
      multiplyRange(square.pop()!, SQUARE_MULTIPLIER);
    } else {
      splitBreak(t).forEach((part, i) => {
        if (i > 0) push("BREAK", -1);
        push(part, 1.0);
      });
    }
  }
  applyUnclosed(weights, round, ROUND_MULTIPLIER);
  applyUnclosed(weights, square, SQUARE_MULTIPLIER);
  if (texts.length === 0) push("", 1.0);

  // merge runs of identical weights (A1111 pops one neighbour at a time,
  // quadratic on a long run: 100,000 "\\" took 43 s; this is one pass)
  const merged: WeightedText[] = [[texts[0], weights[0]]];
  for (let i = 1; i < texts.length; i++) {
    const last = merged[merged.length - 1];
    if (last[1] === weights[i]) last[0] += texts[i];
    else merged.push([texts[i], weights[i]]);
  }
  return merged;
}

/**
 * Brackets left open apply to the end, one range after another (A1111:
 * `for pos in round_brackets: multiply_range(pos, …)`): the element at p is
 * multiplied, one multiplication at a time, by as many multipliers as open
 * brackets start at or before p. Repeated products are looked up per
 * starting weight instead of recomputed, so 50,000 "[a" stay linear; the
 * floats are the same sequential products.
 */
function applyUnclosed(weights: number[], starts: readonly number[], multiplier: number): void {
  // Per starting weight, the last product reached: `open` never decreases
  // along the prompt, so each chain only ever extends.
  const chains = new Map<number | string, { count: number; value: number }>();
  let open = 0;
  for (let p = 0; p < weights.length; p++) {
    while (open < starts.length && starts[open] <= p) open++;
    if (open === 0) continue;
    const w = weights[p];
    const key = w === 0 && 1 / w < 0 ? "-0" : w; // a Map takes -0 for 0; their products differ in sign
    let chain = chains.get(key);
    if (!chain) {
      chain = { count: 0, value: w };
      chains.set(key, chain);
    }
    for (; chain.count < open; chain.count++) chain.value *= multiplier;
    weights[p] = chain.value;
  }
}

/** Python's float() of a decimal literal (surrounding whitespace allowed), NaN where it would raise. */
function pyFloat(s: string): number {
  const t = s.trim();
  return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(t) ? Number(t) : Number.NaN;
}

// ---- extra networks ---------------------------------------------------------------

/** One `<kind:name:args…>` of a prompt. */
export interface ExtraNetwork {
  /** "lora", "lyco", "hypernet", … (A1111's extra network name). */
  kind: string;
  name: string;
  /** The text-encoder multiplier for LoRA, the strength for hypernetworks: the 2nd positional or `te=`; default 1. */
  multiplier: number;
  /** LoRA's UNet multiplier: the 3rd positional or `unet=`; default `multiplier`. */
  unetMultiplier: number;
  /** Every argument after the kind, as written (split at ":"). */
  args: string[];
  /** The `key=value` arguments. */
  named: Record<string, string>;
}

const RE_EXTRA_NET = /<([\p{L}\p{N}_]+):([^>]+)>/gu;

/**
 * Removes `<lora:name:0.7>`, `<hypernet:name:1>`, … from a prompt and lists
 * them (extra_networks.parse_prompt). Multipliers follow
 * extra_networks_lora.py: `<lora:name:te:unet>`, or named `te=`/`unet=`.
 */
export function extractNetworks(prompt: string): { prompt: string; networks: ExtraNetwork[] } {
  const networks: ExtraNetwork[] = [];
  const stripped = prompt.replace(RE_EXTRA_NET, (whole, kind: string, argText: string) => {
    const args = argText.split(":");
    const positional: string[] = [];
    const named: Record<string, string> = {};
    for (const a of args) {
      // ExtraNetworkParams: item.split('=', 2) makes a named argument only when there is exactly one "="
      const parts = a.split("=");
      if (parts.length === 2) named[parts[0]] = parts[1];
      else positional.push(a);
    }
    const number = (s: string, what: string) => {
      const v = pyFloat(s);
      if (Number.isNaN(v)) throw new Error(`${whole}: ${what} '${s}' is not a number`);
      return v;
    };
    let multiplier = positional.length > 1 ? number(positional[1], "multiplier") : 1.0;
    if (named.te !== undefined) multiplier = number(named.te, "te multiplier");
    let unetMultiplier = positional.length > 2 ? number(positional[2], "unet multiplier") : multiplier;
    if (named.unet !== undefined) unetMultiplier = number(named.unet, "unet multiplier");
    networks.push({ kind, name: positional[0] ?? "", multiplier, unetMultiplier, args, named });
    return "";
  });
  return { prompt: stripped, networks };
}
