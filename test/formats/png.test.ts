// PNG writing: valid chunks and CRCs, pixels that decode back, A1111's parameters text.
import assert from "node:assert/strict";
import { test } from "node:test";
import { inflateSync } from "node:zlib";
import { a1111Parameters, encodePng, readPngText } from "../../src/formats/png.js";

function decodeRgb(png: Buffer): { width: number; height: number; pixels: Buffer } {
  let pos = 8;
  const idat: Buffer[] = [];
  let width = 0;
  let height = 0;
  while (pos < png.length) {
    const len = png.readUInt32BE(pos);
    const type = png.toString("latin1", pos + 4, pos + 8);
    const body = png.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") [width, height] = [body.readUInt32BE(0), body.readUInt32BE(4)];
    if (type === "IDAT") idat.push(body);
    pos += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const rows: Buffer[] = [];
  for (let y = 0; y < height; y++) rows.push(raw.subarray(y * (width * 3 + 1) + 1, (y + 1) * (width * 3 + 1)));
  return { width, height, pixels: Buffer.concat(rows) };
}

test("encodes RGB pixels that decode back exactly, with text chunks", () => {
  const data = Uint8Array.from({ length: 2 * 3 * 3 }, (_, i) => (i * 37) % 256);
  const png = encodePng(
    { width: 2, height: 3, channels: 3, data },
    { parameters: "a cat\nSteps: 20", note: "ünïcode ✓" },
  );
  const back = decodeRgb(png);
  assert.deepEqual([back.width, back.height], [2, 3]);
  assert.deepEqual([...back.pixels], [...data]);
  assert.deepEqual(readPngText(png), { parameters: "a cat\nSteps: 20", note: "ünïcode ✓" });
});

test("A1111 parameters text has the prompt, the negative prompt and the settings line", () => {
  const text = a1111Parameters({
    prompt: "a photo of sks dog, (masterpiece:1.2)",
    negative: "blurry",
    steps: 20,
    sampler: "DPM++ 2M Karras",
    cfg: 7,
    seed: 42,
    width: 512,
    height: 512,
    model: "my-model",
    clipSkip: 2,
  });
  assert.equal(
    text,
    "a photo of sks dog, (masterpiece:1.2)\nNegative prompt: blurry\n" +
      "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model: my-model, Clip skip: 2",
  );
});

test("bad input is refused with a clear error", () => {
  assert.throws(() => encodePng({ width: 2, height: 2, channels: 3, data: new Uint8Array(5) }), /5 bytes for 2x2x3/);
  assert.throws(() => encodePng({ width: 0, height: 2, channels: 3, data: new Uint8Array(0) }), /bad size/);
  assert.throws(() => readPngText(Buffer.from("GIF89a")), /not a PNG/);
  const png = encodePng({ width: 1, height: 1, channels: 3, data: new Uint8Array(3) }, { parameters: "x" });
  assert.throws(() => readPngText(png.subarray(0, 30)), /runs past the end/);
});
