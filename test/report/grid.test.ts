// Sample grids: layout, upscaling, gaps and RGBA, checked on the decoded PNG.
import assert from "node:assert/strict";
import { test } from "node:test";
import { inflateSync } from "node:zlib";
import { composeGrid, type GridImage, imageGrid } from "../../src/report/grid.js";

/** IHDR width/height/bit depth/colour type and the unfiltered RGB pixels of one of our PNGs. */
function decode(png: Uint8Array) {
  const buf = Buffer.from(png);
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal(buf.toString("latin1", 12, 16), "IHDR");
  const width = buf.readUInt32BE(16);
  const height = buf.readUInt32BE(20);
  const [depth, colour] = [buf[24], buf[25]];
  const idat: Buffer[] = [];
  for (let pos = 8; pos < buf.length; ) {
    const len = buf.readUInt32BE(pos);
    if (buf.toString("latin1", pos + 4, pos + 8) === "IDAT") idat.push(buf.subarray(pos + 8, pos + 8 + len));
    pos += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 3 + 1;
  const pixel = (x: number, y: number) => [...raw.subarray(y * stride + 1 + x * 3, y * stride + 4 + x * 3)];
  return { width, height, depth, colour, pixel };
}

const solid = (w: number, h: number, rgb: [number, number, number]): GridImage => ({
  width: w,
  height: h,
  data: Uint8Array.from({ length: w * h * 3 }, (_, i) => rgb[i % 3]),
});

test("lays out images in rows of `columns` with gaps, the right size", () => {
  const images = [solid(4, 3, [255, 0, 0]), solid(4, 3, [0, 255, 0]), solid(4, 3, [0, 0, 255])];
  const png = decode(imageGrid(images, 2, { gap: 2 }));
  assert.deepEqual([png.width, png.height, png.depth, png.colour], [2 * 4 + 3 * 2, 2 * 3 + 3 * 2, 8, 2]);
  assert.deepEqual(png.pixel(0, 0), [255, 255, 255]); // gap
  assert.deepEqual(png.pixel(2, 2), [255, 0, 0]);
  assert.deepEqual(png.pixel(2 + 4 + 2, 2), [0, 255, 0]);
  assert.deepEqual(png.pixel(2, 2 + 3 + 2), [0, 0, 255]);
  assert.deepEqual(png.pixel(8, 7), [255, 255, 255]); // empty fourth cell
});

test("upscales by nearest neighbour", () => {
  const img: GridImage = { width: 2, height: 1, data: Uint8Array.from([10, 20, 30, 200, 210, 220]) };
  const png = decode(imageGrid([img], 4, { scale: 3 }));
  assert.deepEqual([png.width, png.height], [6, 3]);
  for (let y = 0; y < 3; y++) {
    for (let x = 0; x < 3; x++) assert.deepEqual(png.pixel(x, y), [10, 20, 30]);
    for (let x = 3; x < 6; x++) assert.deepEqual(png.pixel(x, y), [200, 210, 220]);
  }
});

test("centres smaller images in cells the size of the largest, and composites RGBA over the background", () => {
  const rgba: GridImage = { width: 1, height: 1, data: Uint8Array.from([0, 0, 0, 128]) };
  const grid = composeGrid([solid(3, 3, [9, 9, 9]), rgba], 2, { background: [200, 100, 0] });
  assert.deepEqual([grid.width, grid.height], [6, 3]);
  const at = (x: number, y: number) => [...grid.data.subarray((y * grid.width + x) * 3, (y * grid.width + x) * 3 + 3)];
  assert.deepEqual(at(4, 1), [Math.round(200 * (127 / 255)), Math.round(100 * (127 / 255)), 0]);
  assert.deepEqual(at(3, 0), [200, 100, 0]);
});

test("refuses bad input", () => {
  assert.throws(() => imageGrid([], 2), /no images/);
  assert.throws(() => imageGrid([solid(2, 2, [0, 0, 0])], 0), /columns/);
  assert.throws(() => imageGrid([solid(2, 2, [0, 0, 0])], 1, { scale: 1.5 }), /scale/);
  assert.throws(() => imageGrid([{ width: 2, height: 2, data: new Uint8Array(5) }], 1), /neither RGB nor RGBA/);
});
