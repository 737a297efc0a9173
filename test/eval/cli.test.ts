// atelier eval from the command line: usage errors exit 2 and name the flag,
// a missing base model names its path, and a whole run on a tiny checkpoint.
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { cli } from "../cli-helper.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const dir = tempDir("atelier-eval-cli-");
const ckpt = join(dir, "tiny.safetensors");
before(() => writeTinyCheckpoint(ckpt, 5));
after(() => rmSync(dir, { recursive: true, force: true }));

test("usage errors exit 2 and name the flag", async () => {
  const cases: [string[], RegExp][] = [
    [["--bogus"], /--bogus/],
    [["--samples", "two"], /--samples must be an integer >= 1/],
    [["--width", "0"], /--width must be an integer >= 8/],
    [["--cfg=-1"], /--cfg must be a number >= 0/],
    [["--sampler", "plms"], /--sampler must be one of ddpm, ddim/],
    [
      ["--subject", "sks:hexagon"],
      /--subject: .*unknown class 'hexagon'; valid classes: circle, square, triangle, star/,
    ],
    [["--subject", "sks:star:pink"], /--subject: .*valid colours: red, orange/],
    [["--subject", "sks:star"], /--subject: .*names no colour/],
    [["--lora-scale", "0.5"], /--lora-scale needs --lora/],
    [["--out", join(dir, "no", "such", "r.json")], /--out: the folder/],
    [["extra"], /expected only flags/],
  ];
  for (const [argv, re] of cases) {
    const r = await cli("eval", ...argv);
    assert.equal(r.code, 2, argv.join(" "));
    assert.match(r.err, re, argv.join(" "));
  }
  const help = await cli("eval", "--help");
  assert.equal(help.code, 0);
  assert.match(help.out, /usage: atelier eval/);
});

test("a missing base model is named, the built-in one with its path", async () => {
  const missing = join(dir, "shapes-base");
  const saved = process.env.ATELIER_SHAPES_BASE;
  process.env.ATELIER_SHAPES_BASE = missing;
  try {
    const r = await cli("eval");
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`the base model ${missing} does not exist \\(the built-in shapes base`));
  } finally {
    if (saved === undefined) delete process.env.ATELIER_SHAPES_BASE;
    else process.env.ATELIER_SHAPES_BASE = saved;
  }
  const lora = await cli("eval", "--base", ckpt, "--lora", join(dir, "nope.safetensors"));
  assert.equal(lora.code, 1);
  assert.match(lora.err, /the LoRA file \(--lora\) .*nope\.safetensors does not exist/);
});

test("a whole run on a tiny checkpoint: a table, JSON on stdout, the report written", async () => {
  const common = [
    "--base",
    ckpt,
    "--tokenizer",
    sharedFixture("tokenizer"),
    "--samples",
    "2",
    "--steps",
    "2",
    "--width",
    "16",
    "--height",
    "16",
  ];
  const table = await cli("eval", ...common);
  assert.equal(table.code, 0, table.err);
  assert.match(table.err, /note: evaluating the base model .* against itself/);
  assert.match(table.out, /^class preservation\s+1\.000\s+1\.000\s+0\.000/m);

  const out = join(dir, "report.json");
  const json = await cli("eval", ...common, "--model", ckpt, "--json", "--out", out);
  assert.equal(json.code, 0, json.err);
  const report = JSON.parse(json.out);
  assert.equal(report.settings.samples, 2);
  assert.equal(report.settings.width, 16);
  assert.equal(report.settings.same_model, true);
  assert.ok(existsSync(out));
  assert.deepEqual(JSON.parse(readFileSync(out, "utf8")), report);
  assert.match(json.err, /wrote .*report\.json/);
});
