// A JSON parser as strict as the one the reference safetensors reader uses
// (serde-rs/json src/de.rs and src/read.rs), where JSON.parse is looser:
// numbers keep their source text (so `4.0` and `-0` can be told from `4` and
// `0`; serde_json reads them as floats, which no integer field accepts), a
// lone UTF-16 surrogate escape is an error (read.rs parse_unicode_escape),
// nesting stops at serde_json's recursion limit (128 levels, the 128th is
// refused), and a key repeated in one object is an error (JSON.parse keeps
// the last one silently). Objects come out as Maps in file order, so no key
// ("__proto__", "0") is special.

/** A number with its source text. */
export class JsonNumber {
  constructor(readonly raw: string) {}
  /** The source text is a non-negative integer literal (no sign, fraction or exponent): what a Rust usize accepts. */
  get isUnsigned(): boolean {
    return /^(0|[1-9][0-9]*)$/.test(this.raw);
  }
}

export type Json = null | boolean | string | JsonNumber | Json[] | JsonObject;
export type JsonObject = Map<string, Json>;

export class JsonSyntaxError extends Error {
  override name = "JsonSyntaxError";
}

/** A key that occurs twice in one object; `topLevel` when it is a key of the outermost object. */
export class DuplicateKeyError extends JsonSyntaxError {
  override name = "DuplicateKeyError";
  constructor(
    readonly key: string,
    readonly topLevel: boolean,
  ) {
    super(`duplicate key ${JSON.stringify(key)}`);
  }
}

/** serde_json's recursion limit: `remaining_depth: 128`, and the container that brings it to 0 is refused. */
export const MAX_DEPTH = 127;

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const HEX4 = /^[0-9a-fA-F]{4}$/;
const ESCAPES: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** Parses a complete JSON text (whitespace around it allowed, nothing else). */
export function parseJson(text: string, maxDepth = MAX_DEPTH): Json {
  let i = 0;
  const fail = (what: string, at = i): never => {
    throw new JsonSyntaxError(`${what} at character ${at}`);
  };
  const ws = () => {
    for (;;) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else return;
    }
  };
  const hex = (at: number): number => {
    const h = text.slice(at, at + 4);
    if (!HEX4.test(h)) fail("bad \\u escape", at - 2);
    return Number.parseInt(h, 16);
  };
  const string = (): string => {
    const start = ++i; // past the opening quote
    let out = "";
    let from = start;
    for (;;) {
      const c = text.charCodeAt(i);
      if (Number.isNaN(c)) fail("unterminated string", start - 1);
      if (c === 0x22) {
        out += text.slice(from, i++);
        return out;
      }
      if (c < 0x20) fail("control character in a string");
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(from, i);
      const e = text[i + 1];
      if (e === "u") {
        const n = hex(i + 2);
        i += 6;
        if (n >= 0xdc00 && n <= 0xdfff) fail(`lone UTF-16 surrogate \\u${n.toString(16)}`, i - 6);
        if (n >= 0xd800 && n <= 0xdbff) {
          if (text[i] !== "\\" || text[i + 1] !== "u") fail(`lone UTF-16 surrogate \\u${n.toString(16)}`, i - 6);
          const m = hex(i + 2);
          if (m < 0xdc00 || m > 0xdfff) fail(`lone UTF-16 surrogate \\u${n.toString(16)}`, i - 6);
          i += 6;
          out += String.fromCharCode(n, m);
        } else out += String.fromCharCode(n);
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        i += 2;
      } else fail("bad escape in a string");
      from = i;
    }
  };
  const value = (depth: number): Json => {
    ws();
    const c = text[i];
    if (c === "{" || c === "[") {
      if (depth >= maxDepth) fail(`nested deeper than ${maxDepth} levels`);
      i++;
      ws();
      if (c === "[") {
        const arr: Json[] = [];
        if (text[i] === "]") {
          i++;
          return arr;
        }
        for (;;) {
          arr.push(value(depth + 1));
          ws();
          if (text[i] === ",") i++;
          else if (text[i] === "]") {
            i++;
            return arr;
          } else fail("expected ',' or ']'");
        }
      }
      const obj: JsonObject = new Map();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a string key");
        const key = string();
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        const v = value(depth + 1);
        if (obj.has(key)) throw new DuplicateKeyError(key, depth === 0);
        obj.set(key, v);
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") {
          i++;
          return obj;
        } else fail("expected ',' or '}'");
      }
    }
    if (c === '"') return string();
    if (c === "-" || (c >= "0" && c <= "9")) {
      NUMBER.lastIndex = i;
      const m = NUMBER.exec(text);
      if (!m) return fail("bad number");
      i += m[0].length;
      // serde_json refuses a number no f64 holds (1e400), wherever it stands
      if (!Number.isFinite(Number(m[0]))) return fail(`number out of range: ${m[0].slice(0, 40)}`);
      return new JsonNumber(m[0]);
    }
    for (const [word, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    return fail(c === undefined ? "unexpected end of text" : `unexpected ${JSON.stringify(c)}`);
  };
  const v = value(0);
  ws();
  if (i < text.length) fail("trailing characters after the JSON value");
  return v;
}

/** What a value is, for a message: "object", "array", "string", "number", "boolean", "null". */
export function kindOf(v: Json): string {
  if (v === null) return "null";
  if (v instanceof Map) return "object";
  if (Array.isArray(v)) return "array";
  if (v instanceof JsonNumber) return "number";
  return typeof v;
}

/** A value as compact JSON text cut to `max` characters (numbers in their source spelling). */
export function showJson(v: Json, max = 80): string {
  let out = "";
  const put = (s: string) => {
    out += s;
    return out.length <= max;
  };
  const walk = (x: Json): boolean => {
    if (x instanceof JsonNumber) return put(x.raw);
    if (Array.isArray(x)) {
      if (!put("[")) return false;
      for (let k = 0; k < x.length; k++) if ((k > 0 && !put(",")) || !walk(x[k])) return false;
      return put("]");
    }
    if (x instanceof Map) {
      if (!put("{")) return false;
      let first = true;
      for (const [k, y] of x) {
        if ((!first && !put(",")) || !put(`${JSON.stringify(k)}:`) || !walk(y)) return false;
        first = false;
      }
      return put("}");
    }
    return put(JSON.stringify(typeof x === "string" ? x.slice(0, max) : x));
  };
  walk(v);
  return out.length > max ? `${out.slice(0, max - 1)}…` : out;
}
