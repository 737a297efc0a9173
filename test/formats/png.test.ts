// PNG writing: valid chunks and CRCs, pixels that decode back, A1111's parameters text;
// reading text chunks back within size limits.
import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync, inflateSync } from "node:zlib";
import { a1111Parameters, encodePng, MAX_TEXT_CHUNK, MAX_TEXT_MEMORY, readPngText } from "../../src/formats/png.js";
import { crc32 } from "../../src/formats/zip.js";

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

/** A PNG of one pixel with `chunks` (type, body) inserted before IEND. */
function pngWith(chunks: [string, Buffer][]): Buffer {
  const png = encodePng({ width: 1, height: 1, channels: 3, data: new Uint8Array(3) });
  const parts = chunks.map(([type, body]) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(body.length, 0);
    head.write(type, 4, "latin1");
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])), 0);
    return Buffer.concat([head, body, crc]);
  });
  return Buffer.concat([png.subarray(0, png.length - 12), ...parts, png.subarray(png.length - 12)]);
}

const latin1 = (s: string) => Buffer.from(s, "latin1");

test("text chunks are inflated within Pillow's limits: 1 MiB a chunk, 64 MiB in all", () => {
  const bomb = deflateSync(Buffer.alloc(MAX_TEXT_CHUNK + 1, 0x61));
  assert.ok(bomb.length < 4096, "a few KB");
  const z = pngWith([["zTXt", Buffer.concat([latin1("parameters\0\0"), bomb])]]);
  assert.throws(
    () => readPngText(z, "a.png"),
    /^Error: a\.png: chunk zTXt "parameters" inflates to more than 1048576 bytes \(the text chunk limit\)/,
  );
  const i = pngWith([["iTXt", Buffer.concat([latin1("parameters\0\x01\0en\0\0"), bomb])]]);
  assert.throws(() => readPngText(i), /chunk iTXt "parameters" inflates to more than 1048576 bytes/);
  // Exactly at the limit is fine; 65 such chunks are not.
  const full = deflateSync(Buffer.alloc(MAX_TEXT_CHUNK, 0x62));
  assert.equal(readPngText(pngWith([["zTXt", Buffer.concat([latin1("k\0\0"), full])]])).k.length, MAX_TEXT_CHUNK);
  const many = pngWith(
    Array.from({ length: 65 }, (_, n) => ["zTXt", Buffer.concat([latin1(`k${n}\0\0`), full])] as [string, Buffer]),
  );
  assert.throws(() => readPngText(many), /text chunks hold more than 67108864 bytes \(at zTXt "k64"\)/);
  assert.ok(MAX_TEXT_MEMORY === 64 * MAX_TEXT_CHUNK);
});

test("malformed chunks are refused, not misread", () => {
  // iTXt without its language tag / translated keyword terminators.
  assert.throws(
    () => readPngText(pngWith([["iTXt", latin1("parameters\0\0\0en")]])),
    /chunk iTXt "parameters" is truncated/,
  );
  assert.throws(() => readPngText(pngWith([["zTXt", latin1("k\0\x05xx")]])), /unknown compression method 5/);
  assert.throws(
    () => readPngText(pngWith([["zTXt", latin1("k\0\0garbage")]])),
    /chunk zTXt "k": corrupt compressed text/,
  );
  const png = pngWith([["tEXt", latin1("k\0v")]]);
  const huge = Buffer.from(png);
  huge.writeUInt32BE(0x80000000, 33); // the first chunk after IHDR
  assert.throws(
    () => readPngText(huge),
    /chunk [A-Za-z]{4} claims 2147483648 bytes \(the format's limit is 2147483647\)/,
  );
  const badType = Buffer.from(png);
  badType.write("t\0Xt", 37, "latin1");
  assert.throws(() => readPngText(badType), /bad chunk type "t\\u0000Xt" at byte 37/);
  assert.deepEqual(readPngText(png), { k: "v" });
});

test("a zTXt chunk that ends at its keyword's NUL is refused as truncated, naming the chunk", () => {
  assert.throws(
    () => readPngText(pngWith([["zTXt", latin1("k\0")]]), "t.png"),
    /^Error: t\.png: chunk zTXt "k" is truncated \(no compression method byte\)$/,
  );
  assert.throws(
    () => readPngText(pngWith([["zTXt", latin1("k\0\x07")]])),
    /chunk zTXt "k": unknown compression method 7 \(only 0, deflate\)/,
  );
});
