// Subject specs and the signature read from instance images.
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import sharp from "sharp";
import {
  checkSubjects,
  defaultSubject,
  parseSubjectSpec,
  resolveSubject,
  SubjectSpecError,
  signatureFromImages,
} from "../../src/eval/subject.js";
import { generateSubject, generateWorld, renderScene, writeSceneFolder } from "../../src/shapes/world.js";
import { tempDir } from "../helpers.js";

const dir = tempDir("atelier-eval-subject-");
after(() => rmSync(dir, { recursive: true, force: true }));

test("the default subject is the shapes world's yellow star with a red dot, as sks", () => {
  assert.deepEqual(defaultSubject(), {
    token: "sks",
    className: "star",
    signature: { shape: "star", colour: "yellow", dot: "red" },
    seenBackgrounds: ["green", "blue", "purple"],
  });
});

test("specs: TOKEN:CLASS[:COLOUR[:DOT]]", () => {
  assert.deepEqual(parseSubjectSpec("sks:star:yellow:red"), {
    token: "sks",
    className: "star",
    colour: "yellow",
    dot: "red",
  });
  assert.deepEqual(parseSubjectSpec("zwx:Circle:BLUE"), {
    token: "zwx",
    className: "circle",
    colour: "blue",
    dot: null,
  });
  assert.deepEqual(parseSubjectSpec("zwx:square:blue:none"), {
    token: "zwx",
    className: "square",
    colour: "blue",
    dot: null,
  });
  assert.deepEqual(parseSubjectSpec("ohwx:triangle"), { token: "ohwx", className: "triangle" });
  const s = resolveSubject(parseSubjectSpec("sks:star:yellow:red"));
  assert.deepEqual(s.signature, { shape: "star", colour: "yellow", dot: "red" });
  assert.equal(s.seenBackgrounds, null);
});

test("bad specs name what is wrong and list the valid names", () => {
  const bad = (spec: string, re: RegExp) =>
    assert.throws(
      () => parseSubjectSpec(spec),
      (e: Error) => {
        assert.ok(e instanceof SubjectSpecError);
        assert.match(e.message, re);
        return true;
      },
    );
  bad("sks", /expected TOKEN:CLASS\[:COLOUR\[:DOT\]\]/);
  bad("a:b:c:d:e", /expected TOKEN:CLASS/);
  bad(":star", /token '' must be one word/);
  bad("sks:hexagon", /unknown class 'hexagon'; valid classes: circle, square, triangle, star/);
  bad("sks:star:pink", /unknown colour 'pink'; valid colours: red, orange, yellow, green, blue, purple/);
  bad("sks:star:yellow:white", /unknown dot colour 'white'; valid: red, orange, yellow, green, blue, purple or none/);
  bad("sks:star:yellow:yellow", /cannot have the shape's own colour/);
  assert.throws(() => resolveSubject(parseSubjectSpec("sks:star")), /names no colour.*--instance-dir/);
  assert.throws(() => checkSubjects([defaultSubject(), defaultSubject()]), /two subjects have the token 'sks'/);
  assert.throws(() => checkSubjects([]), /no subject/);
});

test("signatureFromImages: the majority of PNGs and JPEGs, subfolders included", async () => {
  const inst = join(dir, "instance");
  writeSceneFolder(inst, generateSubject(7, 5));
  // Two JPEGs a folder down, as a kohya "10_sks star" layout has them.
  mkdirSync(join(inst, "10_sks star"));
  for (const [i, scene] of generateSubject(8, 2).entries()) {
    const img = renderScene(scene);
    await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
      .jpeg({ quality: 95 })
      .toFile(join(inst, "10_sks star", `${i}.jpg`));
  }
  const r = await signatureFromImages(inst);
  assert.deepEqual(r.signature, { shape: "star", colour: "yellow", dot: "red" });
  assert.equal(r.images, 7);
  assert.ok(r.agreement.shape >= 6 && r.agreement.colour >= 6 && r.agreement.dot >= 6, JSON.stringify(r.agreement));
  assert.ok(r.backgrounds.length > 0);
  for (const bg of r.backgrounds) assert.ok(["green", "blue", "purple"].includes(bg), bg);

  // What the spec leaves out comes from the images; the spec's own colour wins.
  const s = resolveSubject(parseSubjectSpec("sks:star"), r);
  assert.deepEqual(s.signature, { shape: "star", colour: "yellow", dot: "red" });
  assert.deepEqual(s.seenBackgrounds, r.backgrounds);
  assert.deepEqual(resolveSubject(parseSubjectSpec("sks:star:orange"), r).signature.colour, "orange");
  assert.throws(() => resolveSubject(parseSubjectSpec("sks:circle"), r, inst), /show mostly stars.*class circle/);
});

test("signatureFromImages: clear errors for an empty or missing folder and for blank images", async () => {
  const empty = join(dir, "empty");
  mkdirSync(empty);
  await assert.rejects(signatureFromImages(empty), /no images \(.*\.png.*\) in .*empty/);
  await assert.rejects(signatureFromImages(join(dir, "missing")), /cannot read the folder .*missing/);
  const blank = join(dir, "blank");
  mkdirSync(blank);
  await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 40, g: 90, b: 225 } } })
    .png()
    .toFile(join(blank, "0.png"));
  await assert.rejects(signatureFromImages(blank), /found no coloured shape in any of the 1 images/);
  // A world folder shows many shapes; the majority still names one.
  const world = join(dir, "world");
  writeSceneFolder(world, generateWorld(3, 4));
  const w = await signatureFromImages(world);
  assert.equal(w.images, 4);
});
