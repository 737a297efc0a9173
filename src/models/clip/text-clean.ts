// Text cleaning before CLIP's BPE, as openai/CLIP clip/simple_tokenizer.py
// (basic_clean + whitespace_clean) does it: ftfy.fix_text → html.unescape
// twice → strip → collapse whitespace → lowercase.
//
// ftfy (rspeer/python-ftfy 6.1, ftfy/__init__.py fix_and_explain and
// ftfy/fixes.py) is reproduced in part: the fixers that change ordinary
// prompts (terminal escapes, control characters, C1 controls, ligatures,
// fullwidth characters, curly quotes, line breaks, surrogates, NFC) exactly,
// and the mojibake repair for its common case (UTF-8 read as Latin-1 or
// Windows-1252) with a simpler badness test than ftfy's.

/** Python's str.isspace() set, which `\s` in Python's `re` and str.strip() use. */
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_SPACE_RUN = new RegExp(`[${PY_SPACE}]+`, "g");
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "g");

/** Python's `str.strip()`. */
export function pyStrip(text: string): string {
  return text.replace(PY_STRIP, "");
}

/** The CLIP cleaning of one prompt (before the regex pre-tokenizer). */
export function cleanText(text: string): string {
  let t = fixText(text);
  t = htmlUnescape(htmlUnescape(t));
  t = pyStrip(t);
  return pyStrip(t.replace(PY_SPACE_RUN, " ")).toLowerCase();
}

// ---- html.unescape (CPython Lib/html/__init__.py) -------------------------------

// Windows-1252 bytes 0x80–0x9F; the five undefined bytes map to themselves
// (ftfy's "sloppy-windows-1252", and html.unescape's _invalid_charrefs).
const CP1252_HIGH = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d, 0x8f,
  0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];
const CP1252_BYTE = new Map<number, number>(CP1252_HIGH.map((cp, i) => [cp, 0x80 + i]));

// HTML 4 Latin-1 entities U+00A0–U+00FF, in code point order; html5 also knows them without ";".
const LATIN1_NAMES =
  "nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy reg macr deg plusmn sup2 sup3 acute " +
  "micro para middot cedil sup1 ordm raquo frac14 frac12 frac34 iquest Agrave Aacute Acirc Atilde Auml Aring AElig " +
  "Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde Ograve Oacute Ocirc Otilde Ouml times Oslash " +
  "Ugrave Uacute Ucirc Uuml Yacute THORN szlig agrave aacute acirc atilde auml aring aelig ccedil egrave eacute ecirc " +
  "euml igrave iacute icirc iuml eth ntilde ograve oacute ocirc otilde ouml divide oslash ugrave uacute ucirc uuml " +
  "yacute thorn yuml";

// A common subset of the other html5 named references (which need the ";"), as name:hex code point.
const OTHER_ENTITIES =
  "apos:27 OElig:152 oelig:153 Scaron:160 scaron:161 Yuml:178 fnof:192 circ:2c6 tilde:2dc ensp:2002 " +
  "emsp:2003 thinsp:2009 zwnj:200c zwj:200d lrm:200e rlm:200f ndash:2013 mdash:2014 lsquo:2018 " +
  "rsquo:2019 sbquo:201a ldquo:201c rdquo:201d bdquo:201e dagger:2020 Dagger:2021 bull:2022 " +
  "hellip:2026 permil:2030 prime:2032 Prime:2033 lsaquo:2039 rsaquo:203a oline:203e frasl:2044 " +
  "euro:20ac trade:2122 larr:2190 uarr:2191 rarr:2192 darr:2193 harr:2194 minus:2212 radic:221a " +
  "infin:221e ne:2260 le:2264 ge:2265 asymp:2248 equiv:2261 sum:2211 prod:220f star:2606 starf:2605 " +
  "check:2713 spades:2660 clubs:2663 hearts:2665 diams:2666 loz:25ca lowast:2217 sdot:22c5 laquo:ab " +
  "raquo:bb colon:3a comma:2c period:2e excl:21 quest:3f num:23 dollar:24 percnt:25 lpar:28 rpar:29 " +
  "ast:2a plus:2b sol:2f semi:3b equals:3d lsqb:5b rsqb:5d bsol:5c lowbar:5f grave:60 lcub:7b rcub:7d " +
  "verbar:7c vert:7c Tab:9 NewLine:a";

const GREEK =
  "Alpha Beta Gamma Delta Epsilon Zeta Eta Theta Iota Kappa Lambda Mu Nu Xi Omicron Pi Rho _ Sigma Tau Upsilon Phi Chi Psi Omega";

/** html5 named references as Python's html.entities.html5 keys them: "amp;" and, for the legacy ones, "amp". */
const HTML5 = (() => {
  const m = new Map<string, string>();
  const legacy = (name: string, cp: number) => {
    m.set(name, String.fromCodePoint(cp));
    m.set(`${name};`, String.fromCodePoint(cp));
  };
  LATIN1_NAMES.split(" ").forEach((name, i) => {
    legacy(name, 0xa0 + i);
  });
  for (const [name, cp] of [
    ["amp", 0x26],
    ["lt", 0x3c],
    ["gt", 0x3e],
    ["quot", 0x22],
  ] as const) {
    legacy(name, cp);
    legacy(name.toUpperCase(), cp);
  }
  legacy("COPY", 0xa9);
  legacy("REG", 0xae);
  for (const pair of OTHER_ENTITIES.split(" ")) {
    const [name, hex] = pair.split(":");
    m.set(`${name};`, String.fromCodePoint(Number.parseInt(hex, 16)));
  }
  GREEK.split(" ").forEach((name, i) => {
    if (name === "_") return;
    m.set(`${name};`, String.fromCodePoint(0x391 + i));
    m.set(`${name.toLowerCase()};`, String.fromCodePoint(0x3b1 + i));
  });
  m.set("sigmaf;", "\u03c2");
  return m;
})();

const CHARREF = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g;

function isInvalidCodepoint(n: number): boolean {
  return (
    (n >= 0x1 && n <= 0x8) ||
    n === 0xb ||
    (n >= 0xe && n <= 0x1f) ||
    (n >= 0x7f && n <= 0x9f) ||
    (n >= 0xfdd0 && n <= 0xfdef) ||
    (n & 0xfffe) === 0xfffe
  );
}

function replaceCharref(s: string): string {
  if (s[0] === "#") {
    const hex = s[1] === "x" || s[1] === "X";
    const digits = s.slice(hex ? 2 : 1).replace(/;$/, "");
    const num = hex ? Number.parseInt(digits, 16) : Number(digits);
    if (num === 0) return "\ufffd";
    if (num === 0x0d) return "\r";
    if (num >= 0x80 && num <= 0x9f) return String.fromCodePoint(CP1252_HIGH[num - 0x80]);
    if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return "\ufffd";
    if (isInvalidCodepoint(num)) return "";
    return String.fromCodePoint(num);
  }
  const whole = HTML5.get(s);
  if (whole !== undefined) return whole;
  // the longest legacy name that prefixes the reference ("&ampfoo" → "&foo")
  for (let x = s.length - 1; x > 1; x--) {
    const hit = HTML5.get(s.slice(0, x));
    if (hit !== undefined) return hit + s.slice(x);
  }
  return `&${s}`;
}

/**
 * Python's `html.unescape`: numeric references with its rules for invalid code
 * points, and named references (the Latin-1 set, the legacy forms without
 * ";", and a common subset of the other html5 names).
 */
export function htmlUnescape(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(CHARREF, (_m, s: string) => replaceCharref(s));
}

// ---- ftfy.fix_text ---------------------------------------------------------------

const FTFY_ENTITY = /&#?[0-9A-Za-z]{1,24};/g;

/** ftfy's unescape_html: only references ending in ";", and a numeric one only if it decodes. */
function ftfyUnescapeHtml(text: string): string {
  return text.replace(FTFY_ENTITY, (m) => {
    const named = HTML5.get(m.slice(1));
    if (named !== undefined && m[1] !== "#") return named;
    if (m.startsWith("&#")) {
      const u = htmlUnescape(m);
      return u.includes(";") ? m : u;
    }
    return m;
  });
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: ftfy's ANSI escape pattern starts with ESC
const ANSI_ESCAPE = /\x1b\[((?:\d|;)*)([a-zA-Z])/g;
// ASCII controls except \t \n \f \r, DEL, deprecated Arabic format controls, BOM, interlinear annotations.
// biome-ignore lint/suspicious/noControlCharactersInRegex: these are the characters ftfy removes
const CONTROL_CHARS = /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
const C1_CONTROLS = /[\x80-\x9f]/g;
const LIGATURES: Record<string, string> = {
  "\u0132": "IJ",
  "\u0133": "ij",
  "\u0149": "\u02bcn",
  "\u01f1": "DZ",
  "\u01f2": "Dz",
  "\u01f3": "dz",
  "\u01c4": "D\u017d",
  "\u01c5": "D\u017e",
  "\u01c6": "d\u017e",
  "\u01c7": "LJ",
  "\u01c8": "Lj",
  "\u01c9": "lj",
  "\u01ca": "NJ",
  "\u01cb": "Nj",
  "\u01cc": "nj",
  "\ufb00": "ff",
  "\ufb01": "fi",
  "\ufb02": "fl",
  "\ufb03": "ffi",
  "\ufb04": "ffl",
  "\ufb05": "\u017ft",
  "\ufb06": "st",
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join("")}]`, "g");
// ftfy's WIDTH_MAP: U+3000 and U+FF01–U+FFEF where NFKC changes the character.
const WIDE = /[\u3000\uff01-\uffef]/g;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

// The characters a UTF-8 continuation byte (0x80–0xBF) shows as in Windows-1252.
const CONT = `\\u0080-\\u00bf${CP1252_HIGH.slice(0, 0x20)
  .filter((cp) => cp > 0xff)
  .map((cp) => `\\u${cp.toString(16).padStart(4, "0")}`)
  .join("")}`;
// A UTF-8 multi-byte sequence shown as Latin-1/Windows-1252 text: "Ã©", "â€”", "ðŸ”¥".
const MOJIBAKE = new RegExp(
  `[\\u00c2-\\u00df][${CONT}]|[\\u00e0-\\u00ef][${CONT}]{2}|[\\u00f0-\\u00f4][${CONT}]{3}`,
  "g",
);
const MOJIBAKE_TEST = new RegExp(MOJIBAKE.source);

/** The bytes of `text` in sloppy Windows-1252 (or Latin-1), or null if a character has no byte. */
function singleByteEncode(text: string, latin1: boolean): Uint8Array | null {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80 || (c >= 0xa0 && c <= 0xff) || (latin1 && c <= 0xff)) out[i] = c;
    else {
      const b = latin1 ? undefined : CP1252_BYTE.get(c);
      if (b === undefined) return null;
      out[i] = b;
    }
  }
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/**
 * ftfy's fix_encoding for UTF-8 that was decoded as Latin-1 or Windows-1252:
 * the whole text re-decoded when that works, else each mojibake sequence on
 * its own (decode_inconsistent_utf8). ftfy weighs a "badness" score and also
 * tries other code pages (1250, 1251, MacRoman, …); this does not.
 */
function fixEncoding(text: string): string {
  // ftfy's "Ã " → "à" (restore_byte_a0) and lossy-sequence repairs are not reproduced.
  if (/^\p{ASCII}*$/u.test(text) || !MOJIBAKE_TEST.test(text)) return text;
  for (const latin1 of [true, false]) {
    const bytes = singleByteEncode(text, latin1);
    const fixed = bytes && decodeUtf8(bytes);
    if (fixed !== null && fixed !== text) return fixed;
  }
  return text.replace(MOJIBAKE, (m) => {
    const bytes = singleByteEncode(m, false);
    return (bytes && decodeUtf8(bytes)) ?? m;
  });
}

function fixOnce(text: string, unescapeHtml: boolean): string {
  let t = unescapeHtml ? ftfyUnescapeHtml(text) : text;
  t = t.replace(ANSI_ESCAPE, "");
  t = fixEncoding(t);
  t = t.replace(C1_CONTROLS, (c) => String.fromCodePoint(CP1252_HIGH[c.charCodeAt(0) - 0x80]));
  t = t.replace(LIGATURE_RE, (c) => LIGATURES[c]);
  t = t.replace(WIDE, (c) => (c === "\u3000" ? " " : c.normalize("NFKC")));
  t = t.replace(/[\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
  t = t.replace(/\r\n|[\r\u2028\u2029\x85]/g, "\n");
  t = t.replace(LONE_SURROGATE, "\ufffd");
  t = t.replace(CONTROL_CHARS, "");
  return t.normalize("NFC");
}

/**
 * A subset of `ftfy.fix_text` (default settings): line by line, each line
 * fixed repeatedly until it stops changing; HTML entities are decoded only
 * until a line with "<" appears (ftfy's unescape_html="auto").
 */
export function fixText(text: string): string {
  let unescapeHtml = true;
  const out: string[] = [];
  for (const line of text.split(/(?<=\n)/)) {
    if (line.includes("<")) unescapeHtml = false;
    let t = line;
    for (let i = 0; i < 16; i++) {
      const next = fixOnce(t, unescapeHtml);
      if (next === t) break;
      t = next;
    }
    out.push(t);
  }
  return out.join("");
}
