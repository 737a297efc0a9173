// The strict JSON parser the safetensors reader uses: JSON.parse's grammar,
// plus serde_json's refusals (lone surrogates, 128 levels) and duplicate keys.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DuplicateKeyError, JsonNumber, parseJson, showJson } from "../../src/formats/strict-json.js";

test("parses what JSON.parse does, objects as Maps in file order and numbers with their source text", () => {
  const v = parseJson(' {"b":[1, -2.5e3, true, false, null], "a":"x\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9", "0": {}} ');
  assert.ok(v instanceof Map);
  assert.deepEqual([...v.keys()], ["b", "a", "0"]);
  const arr = v.get("b") as unknown[];
  assert.deepEqual(
    arr.map((x) => (x instanceof JsonNumber ? x.raw : x)),
    ["1", "-2.5e3", true, false, null],
  );
  assert.equal(v.get("a"), 'x"\\/\b\f\n\r\té');
  assert.equal(showJson(v), '{"b":[1,-2.5e3,true,false,null],"a":"x\\"\\\\/\\b\\f\\n\\r\\té","0":{}}');
  assert.ok(new JsonNumber("0").isUnsigned && new JsonNumber("120").isUnsigned);
  for (const raw of ["-0", "4.0", "4e0", "-1"]) assert.ok(!new JsonNumber(raw).isUnsigned, raw);
});

test("refuses what JSON.parse refuses", () => {
  for (const bad of [
    "",
    "{",
    '{"a"}',
    '{"a":1,}',
    "[1,]",
    "01",
    "1.",
    "-",
    '"\\x"',
    '"a\u0001"',
    "{} x",
    "tru",
    "\ufeff{}",
    "'a'",
  ]) {
    assert.throws(() => JSON.parse(bad), SyntaxError, `JSON.parse ${JSON.stringify(bad)}`);
    assert.throws(() => parseJson(bad), /at character \d+/, JSON.stringify(bad));
  }
});

test("refuses lone surrogates, deep nesting and duplicate keys (even spelled differently)", () => {
  assert.throws(() => parseJson('"\\ud800"'), /lone UTF-16 surrogate \\ud800 at character 1/);
  assert.throws(() => parseJson('"\\ude00\\ud83d"'), /lone UTF-16 surrogate \\ude00/);
  assert.throws(() => parseJson('"\\ud83d\\u0020"'), /lone UTF-16 surrogate/);
  assert.equal(parseJson('"\\ud83d\\ude00"'), "😀");
  assert.doesNotThrow(() => parseJson(`${"[".repeat(127)}${"]".repeat(127)}`));
  assert.throws(() => parseJson(`${"[".repeat(128)}${"]".repeat(128)}`), /nested deeper than 127 levels/);
  assert.throws(() => parseJson(`${"[".repeat(1e6)}`), /nested deeper/);
  const dup = (text: string) => {
    try {
      parseJson(text);
    } catch (e) {
      assert.ok(e instanceof DuplicateKeyError);
      return { key: e.key, topLevel: e.topLevel };
    }
    return undefined;
  };
  assert.equal(dup('{"a":"a","b":["a","a",{"a":1}],"c":{"a":"\\"a"}}'), undefined);
  assert.deepEqual(dup('{"x":{"a\\"":1,"a\\u0022":2}}'), { key: 'a"', topLevel: false });
  assert.deepEqual(dup('{"w":1, "\\u0077" :2}'), { key: "w", topLevel: true });
});
