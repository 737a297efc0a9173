// Captions: sidecar files, A1111 file-name captions, [filewords], kohya's
// shuffle with keep_tokens and dropout.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  applyTemplate,
  buildPrompt,
  captionPath,
  filenameCaption,
  processCaption,
  readCaption,
} from "../../../src/train/data/captions.js";
import { Rng } from "../../../src/train/data/rng.js";
import { checkLeaks } from "../../helpers.js";
import { tempDir } from "./images.js";

checkLeaks();

const dir = tempDir();

test("captions come from the sidecar file, with any caption extension", () => {
  const img = join(dir, "001.png");
  writeFileSync(join(dir, "001.txt"), "\uFEFF  a photo of sks dog, sitting \n");
  writeFileSync(join(dir, "001.caption"), "from the .caption file");
  assert.equal(captionPath(img), join(dir, "001.txt"));
  assert.deepEqual(readCaption(img), { caption: "a photo of sks dog, sitting", fromFile: true });
  assert.deepEqual(readCaption(img, ".caption"), { caption: "from the .caption file", fromFile: true });
  assert.deepEqual(readCaption(img, "caption"), { caption: "from the .caption file", fromFile: true });
  writeFileSync(join(dir, "empty.txt"), "\n");
  assert.deepEqual(readCaption(join(dir, "empty.png")), { caption: "", fromFile: true });
});

test("without a caption file, the file name without extension and leading counters (A1111)", () => {
  assert.equal(filenameCaption("/x/00012-a red car.png"), "a red car");
  assert.equal(filenameCaption("/x/3-12 blue sky.jpeg"), "blue sky");
  assert.equal(filenameCaption("/x/sks dog (1).webp"), "sks dog (1)");
  assert.equal(filenameCaption("/x/123.png"), "");
  assert.deepEqual(readCaption(join(dir, "0007-red fox.png")), { caption: "red fox", fromFile: false });
});

test("[filewords] templates", () => {
  assert.equal(applyTemplate("photo of sks dog, [filewords]", "on a beach"), "photo of sks dog, on a beach");
  assert.equal(applyTemplate("[filewords], [filewords]", "x"), "x, x");
  assert.equal(applyTemplate("a  photo\nof sks", "ignored"), "a photo of sks");
  assert.equal(applyTemplate(undefined, "just the caption"), "just the caption");
  assert.equal(applyTemplate("", "just the caption"), "just the caption");
  assert.equal(applyTemplate("photo of [filewords] dog", ""), "photo of dog");
});

test("prompts: [filewords] templates (A1111), else the caption file, else the prompt (kohya)", () => {
  const file = { caption: "sks dog on a beach", fromFile: true };
  const name = { caption: "img sks", fromFile: false };
  assert.equal(buildPrompt("photo of [filewords]", file), "photo of sks dog on a beach");
  assert.equal(buildPrompt("photo of [filewords]", name), "photo of img sks");
  assert.equal(buildPrompt("photo of sks dog", file), "sks dog on a beach");
  assert.equal(buildPrompt("photo of sks dog", name), "photo of sks dog");
  assert.equal(buildPrompt("photo of sks dog", { caption: "", fromFile: true }), "photo of sks dog");
  assert.equal(buildPrompt("", name), "img sks");
  assert.equal(buildPrompt(undefined, file), "sks dog on a beach");
});

test("tag shuffle keeps the first keep_tokens tags and is deterministic per seed", () => {
  const caption = "sks dog, sitting, grass, sunny, red collar, park, blue sky";
  const o = { shuffle_tags: true, keep_tokens: 2 };
  const a = processCaption(caption, o, new Rng(7, 0, "caption", 0, 0));
  const b = processCaption(caption, o, new Rng(7, 0, "caption", 0, 0));
  assert.equal(a, b);
  const tags = a.split(", ");
  assert.deepEqual(tags.slice(0, 2), ["sks dog", "sitting"]);
  assert.deepEqual([...tags].sort(), caption.split(", ").sort());
  // Other seeds give other orders, the kept tags always first.
  const orders = new Set<string>();
  for (let s = 0; s < 20; s++) {
    const out = processCaption(caption, o, new Rng(s));
    assert.ok(out.startsWith("sks dog, sitting, "), out);
    orders.add(out);
  }
  assert.ok(orders.size > 10, `only ${orders.size} distinct orders`);
  // Without shuffling or dropout the caption is untouched.
  assert.equal(processCaption("a,b ,  c", {}, new Rng(1)), "a,b ,  c");
});

test("keep_tokens_separator fixes a prefix and a suffix", () => {
  const o = { shuffle_tags: true, keep_tokens_separator: "|||" };
  for (let s = 0; s < 10; s++) {
    const out = processCaption("sks, dog ||| a, b, c, d ||| best quality", o, new Rng(s));
    const tags = out.split(", ");
    assert.deepEqual(tags.slice(0, 2), ["sks", "dog"]);
    assert.equal(tags[tags.length - 1], "best quality");
    assert.deepEqual(tags.slice(2, -1).sort(), ["a", "b", "c", "d"]);
  }
});

test("caption dropout turns the whole caption into '' at its rate", () => {
  assert.equal(processCaption("a, b", { caption_dropout_rate: 1 }, new Rng(1)), "");
  assert.equal(processCaption("a, b", { caption_dropout_rate: 0 }, new Rng(1)), "a, b");
  const rng = new Rng(3);
  let dropped = 0;
  for (let i = 0; i < 4000; i++) if (processCaption("a, b", { caption_dropout_rate: 0.25 }, rng) === "") dropped++;
  assert.ok(Math.abs(dropped / 4000 - 0.25) < 0.03, `dropped ${dropped} of 4000`);
  // Tag dropout only removes movable tags.
  const out = processCaption("keep, a, b, c, d, e, f", { keep_tokens: 1, caption_tag_dropout_rate: 0.5 }, new Rng(5));
  assert.ok(out.startsWith("keep"));
});

test("Rng streams: reproducible, uniform-ish, unbiased shuffles", () => {
  const a = new Rng(1, 2, "x");
  const b = new Rng(1, 2, "x");
  const xs = Array.from({ length: 5 }, () => a.next());
  assert.deepEqual(
    Array.from({ length: 5 }, () => b.next()),
    xs,
  );
  assert.notDeepEqual(
    Array.from({ length: 5 }, () => new Rng(1, 3, "x").next()),
    xs,
  );
  const counts = [0, 0, 0];
  const r = new Rng(9);
  for (let i = 0; i < 3000; i++) counts[r.int(3)]++;
  for (const c of counts) assert.ok(Math.abs(c - 1000) < 120, `${counts}`);
});
