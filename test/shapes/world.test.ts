// The shapes world: determinism, captions, coverage of every shape and colour,
// shapes inside the image, the rasteriser's areas, the subject, the folder writer.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import sharp from "sharp";
import { WorldRng } from "../../src/shapes/rng.js";
import {
  COLOURS,
  caption,
  DOT_FRACTION,
  generateSubject,
  generateWorld,
  PALETTE,
  renderScene,
  type Scene,
  SHAPES,
  STAR_INNER_RATIO,
  sampleScene,
  sceneAt,
  writeSceneFolder,
  writeWorldFolder,
} from "../../src/shapes/world.js";
import { tempDir } from "../helpers.js";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

test("the same seed gives the same scenes and bytes; another seed does not", () => {
  const a = generateWorld(7, 12);
  assert.deepEqual(generateWorld(7, 12), a);
  assert.deepEqual(
    a.map((s) => sha(renderScene(s).data)),
    generateWorld(7, 12).map((s) => sha(renderScene(s).data)),
  );
  const b = generateWorld(8, 12);
  assert.notDeepEqual(b, a);
  assert.notEqual(sha(renderScene(b[0]).data), sha(renderScene(a[0]).data));
  // Scene i depends on (seed, i) only: a longer world starts with the shorter one.
  assert.deepEqual(generateWorld(7, 20).slice(0, 12), a);
  assert.deepEqual(sceneAt(7, 5), a[5]);
});

test("the world is pinned: these bytes change only when the world is changed on purpose", () => {
  const all = createHash("sha256");
  for (const s of generateWorld(1, 8)) all.update(renderScene(s).data);
  assert.equal(all.digest("hex").slice(0, 16), PINNED);
});
// Update (and say so in the commit) only when changing the world's design.
const PINNED = "a0ade2d1abd8731e";

test("the seeded rng is uniform enough and never Math.random", () => {
  const rng = new WorldRng(3);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 10000; i++) counts[Math.floor(rng.next() * 10)]++;
  for (const c of counts) assert.ok(c > 880 && c < 1120, `bucket count ${c}`);
  assert.deepEqual(
    Array.from({ length: 3 }, () => new WorldRng(3, 1).next()),
    Array.from({ length: 3 }, () => new WorldRng(3, 1).next()),
  );
  assert.notEqual(new WorldRng(3, 1).next(), new WorldRng(3, 2).next());
  assert.throws(() => new WorldRng(-1), /integers/);
  assert.throws(() => new WorldRng(0.5), /integers/);
});

test("captions say what the scene is, with the parts that were asked for", () => {
  const s: Scene = {
    shape: "star",
    colour: "red",
    background: "blue",
    cx: 32,
    cy: 32,
    size: 40,
    rotation: 0,
    imageSize: 64,
  };
  assert.equal(caption(s), "a red star on a blue background");
  assert.equal(caption(s, { dropColour: true }), "a star on a blue background");
  assert.equal(caption(s, { dropBackground: true }), "a red star");
  assert.equal(caption(s, { dropColour: true, dropBackground: true }), "a star");
  assert.equal(caption({ ...s, colour: "orange", background: "orange" }), "an orange star on an orange background");
  assert.equal(caption(s, { token: "sks", dropBackground: true }), "a sks star");
  for (const scene of generateWorld(2, 200)) {
    const m = /^an? (\w+) (\w+) on an? (\w+) background$/.exec(caption(scene));
    assert.ok(m, caption(scene));
    assert.deepEqual(m.slice(1), [scene.colour, scene.shape, scene.background]);
  }
});

test("a few hundred scenes hold every shape, colour and background; sizes and positions in range", () => {
  const scenes = generateWorld(3, 400);
  for (const sh of SHAPES)
    assert.ok(
      scenes.some((s) => s.shape === sh),
      sh,
    );
  for (const c of COLOURS) {
    assert.ok(
      scenes.some((s) => s.colour === c),
      `colour ${c}`,
    );
    assert.ok(
      scenes.some((s) => s.background === c),
      `background ${c}`,
    );
  }
  for (const s of scenes) {
    assert.notEqual(s.colour, s.background);
    assert.ok(s.size >= 28 && s.size <= 51.2, `size ${s.size}`);
    const r = s.size / 2;
    assert.ok(s.cx - r >= 1 && s.cx + r <= 63 && s.cy - r >= 1 && s.cy + r <= 63, JSON.stringify(s));
  }
  assert.ok(scenes.some((s) => s.rotation !== 0));
  assert.ok(generateWorld(3, 50, { rotate: false }).every((s) => s.rotation === 0));
  // Turning rotation off changes nothing else.
  assert.deepEqual(
    generateWorld(3, 50, { rotate: false }).map((s) => ({ ...s, rotation: 0 })),
    scenes.slice(0, 50).map((s) => ({ ...s, rotation: 0 })),
  );
});

test("every shape lies inside the image: the outermost pixels are pure background", () => {
  for (const s of generateWorld(4, 120)) {
    const { width, height, data } = renderScene(s);
    const bg = PALETTE[s.background];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (x > 0 && y > 0 && x < width - 1 && y < height - 1) continue;
        const i = (y * width + x) * 3;
        assert.deepEqual([data[i], data[i + 1], data[i + 2]], [...bg], `${caption(s)} at ${x},${y}`);
      }
    }
  }
});

test("rasterised areas match the geometry, and edges are anti-aliased", () => {
  const r = 20;
  const areas: Record<string, number> = {
    circle: Math.PI * r * r,
    square: 2 * r * r,
    triangle: ((3 * Math.sqrt(3)) / 4) * r * r,
    star: 5 * r * r * STAR_INNER_RATIO * Math.sin(Math.PI / 5),
  };
  for (const shape of SHAPES) {
    const s: Scene = {
      shape,
      colour: "red",
      background: "blue",
      cx: 31.3,
      cy: 32.6,
      size: 2 * r,
      rotation: 17,
      imageSize: 64,
    };
    const { data } = renderScene(s);
    const [fg, bg] = [PALETTE.red, PALETTE.blue];
    let area = 0;
    let mixed = 0;
    for (let i = 0; i < 64 * 64; i++) {
      const t = (data[i * 3 + 2] - bg[2]) / (fg[2] - bg[2]); // the blue channel tells red from blue
      area += t;
      if (t > 0.05 && t < 0.95) mixed++;
    }
    assert.ok(Math.abs(area - areas[shape]) < 0.01 * areas[shape], `${shape}: ${area} vs ${areas[shape]}`);
    assert.ok(mixed > 20, `${shape}: ${mixed} anti-aliased pixels`);
    // Another resolution draws the same scene, scaled.
    const big = renderScene(s, { imageSize: 128 });
    assert.equal(big.width, 128);
  }
});

test("the subject: a yellow star with a red dot of at least 8 px, absent from the world", () => {
  const subject = generateSubject(1, 20);
  assert.deepEqual(generateSubject(1, 20), subject);
  for (const s of subject) {
    assert.equal(s.shape, "star");
    assert.equal(s.colour, "yellow");
    assert.ok(s.size * DOT_FRACTION >= 8, `dot ${s.size * DOT_FRACTION} px`);
    const { data } = renderScene(s);
    const at = (x: number, y: number) => {
      const i = (Math.round(y) * 64 + Math.round(x)) * 3;
      return [data[i], data[i + 1], data[i + 2]];
    };
    assert.deepEqual(at(s.cx, s.cy), [...PALETTE.red]);
    let yellow = 0;
    for (let i = 0; i < data.length; i += 3) {
      if (data[i] === PALETTE.yellow[0] && data[i + 1] === PALETTE.yellow[1] && data[i + 2] === PALETTE.yellow[2])
        yellow++;
    }
    assert.ok(yellow > 100, `${yellow} yellow pixels`);
    assert.match(caption(s), /^a yellow star with a red dot on an? \w+ background$/);
  }
  assert.ok(generateWorld(1, 300).every((s) => s.pattern === undefined));
  const twoTone = renderScene({ ...subject[0], pattern: "two-tone", patternColour: "blue", rotation: 0 });
  const colours = new Set<string>();
  for (let i = 0; i < twoTone.data.length; i += 3) colours.add(twoTone.data.slice(i, i + 3).join(","));
  assert.ok(colours.has(PALETTE.blue.join(",")) && colours.has(PALETTE.yellow.join(",")));
});

test("bad scenes and options are refused with a clear error", () => {
  const s = sampleScene(new WorldRng(1));
  assert.throws(() => renderScene({ ...s, shape: "hexagon" as never }), /unknown shape 'hexagon'/);
  assert.throws(() => renderScene({ ...s, colour: "teal" as never }), /unknown colour 'teal'/);
  assert.throws(() => renderScene({ ...s, cx: Number.NaN }), /scene.cx/);
  assert.throws(() => renderScene({ ...s, pattern: "dotted" }), /patternColour/);
  assert.throws(() => generateWorld(1, -1), /non-negative/);
  assert.throws(() => generateWorld(1, 1, { minSize: 0.9, maxSize: 1 }), /size range/);
});

test("writeWorldFolder writes PNGs that decode to the rendered pixels, caption sidecars and scenes.json", async () => {
  const dir = tempDir("shapes-world-");
  try {
    const entries = writeWorldFolder(dir, 5, 6);
    assert.deepEqual(readdirSync(dir).sort(), [
      ...Array.from({ length: 6 }, (_, i) => [`0000${i}.png`, `0000${i}.txt`]).flat(),
      "scenes.json",
    ]);
    const scenes = generateWorld(5, 6);
    for (const [i, e] of entries.entries()) {
      assert.deepEqual(e.scene, scenes[i]);
      assert.equal(readFileSync(join(dir, `0000${i}.txt`), "utf8"), `${caption(scenes[i])}\n`);
      const { data, info } = await sharp(readFileSync(e.image)).raw().toBuffer({ resolveWithObject: true });
      assert.deepEqual([info.width, info.height, info.channels], [64, 64, 3]);
      assert.ok(Buffer.from(renderScene(scenes[i]).data).equals(data), `pixels of ${e.image}`);
    }
    const manifest = JSON.parse(readFileSync(join(dir, "scenes.json"), "utf8"));
    assert.equal(manifest.seed, 5);
    assert.deepEqual(manifest.scenes, scenes);
    // Rewriting replaces in place; without captions no .txt is written.
    const other = tempDir("shapes-subject-");
    try {
      writeSceneFolder(other, generateSubject(2, 2), { captions: false });
      assert.deepEqual(readdirSync(other).sort(), ["00000.png", "00001.png", "scenes.json"]);
      writeSceneFolder(other, generateSubject(2, 2), { caption: { token: "sks" } });
      assert.equal(
        readFileSync(join(other, "00001.txt"), "utf8"),
        `a sks star on a ${generateSubject(2, 2)[1].background} background\n`,
      );
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("writeSceneFolder: per-scene captions and an image transform", async () => {
  const dir = tempDir("shapes-folder-");
  try {
    const scenes = generateWorld(6, 3);
    const invert = (img: { width: number; height: number; data: Uint8Array }, i: number) => ({
      ...img,
      data: img.data.map((v) => (i === 1 ? 255 - v : v)),
    });
    writeSceneFolder(dir, scenes, { captionOf: (s, i) => `picture ${i} of a ${s.shape}`, transform: invert });
    assert.equal(readFileSync(join(dir, "00002.txt"), "utf8"), `picture 2 of a ${scenes[2].shape}\n`);
    for (const i of [0, 1]) {
      const { data } = await sharp(readFileSync(join(dir, `0000${i}.png`)))
        .raw()
        .toBuffer({ resolveWithObject: true });
      const want = invert(renderScene(scenes[i]), i).data;
      assert.ok(Buffer.from(want).equals(data), `image ${i} is the transformed rendering`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
