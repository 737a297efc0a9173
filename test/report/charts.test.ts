// Loss and eval charts: Vega-Lite rendered headless to SVG, one line per run,
// and no failure on empty, one-point or non-finite input.
import assert from "node:assert/strict";
import { test } from "node:test";
import { barChartSvg, ema, lossChartSvg } from "../../src/report/charts.js";

const curve = (n: number, offset: number) =>
  Array.from({ length: n }, (_, i) => ({ step: i * 10, loss: 0.5 * Math.exp(-i / 30) + offset + 0.05 * Math.sin(i) }));

/** The `run: …` of every line-mark path, as Vega labels them for screen readers. */
function lineRuns(svg: string): string[] {
  const out: string[] = [];
  for (const g of svg.matchAll(/<g class="mark-line role-mark[^>]*>(.*?)<\/g>/gs)) {
    for (const m of g[1].matchAll(/<path[^>]*aria-label="[^"]*run: ([^"]*)"[^>]*\sd="M[^"]+"/g)) out.push(m[1]);
  }
  return out;
}

test("draws a raw and a smoothed line for every run", async () => {
  const svg = await lossChartSvg(
    [
      { name: "lora", points: curve(200, 0) },
      { name: "dreambooth", points: curve(150, 0.1) },
    ],
    { title: "Loss", smooth: 10 },
  );
  assert.match(svg, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.ok(svg.trimEnd().endsWith("</svg>"));
  assert.deepEqual(lineRuns(svg).sort(), ["dreambooth", "dreambooth", "lora", "lora"]);
  assert.match(svg, /faint: raw loss · solid: EMA over 10 points/);
  assert.match(svg, /Loss/);
});

test("without smoothing draws one line per run", async () => {
  const svg = await lossChartSvg([{ name: "a", points: curve(50, 0) }], { smooth: 0 });
  assert.deepEqual(lineRuns(svg), ["a"]);
});

test("escapes run names inside the SVG", async () => {
  const svg = await lossChartSvg([{ name: "<script>x</script>", points: curve(30, 0) }]);
  assert.ok(!svg.includes("<script"));
  assert.ok(svg.includes("&lt;script&gt;"));
});

test("empty input and empty series render empty axes without throwing", async () => {
  for (const series of [[], [{ name: "none", points: [] }]]) {
    const svg = await lossChartSvg(series);
    assert.match(svg, /^<svg/);
    assert.deepEqual(lineRuns(svg), []);
  }
});

test("a one-point series is drawn as a point", async () => {
  const svg = await lossChartSvg([{ name: "single", points: [{ step: 1, loss: 0.25 }] }]);
  assert.match(svg, /<g class="mark-symbol role-mark[^>]*><path[^>]*run: single/);
  const mixed = await lossChartSvg([
    { name: "long", points: curve(40, 0) },
    { name: "single", points: [{ step: 100, loss: 0.25 }] },
  ]);
  assert.ok(lineRuns(mixed).includes("long"));
  assert.match(mixed, /<g class="mark-symbol role-mark[^>]*><path[^>]*run: single/);
});

test("leaves out non-finite losses, and non-positive ones on a log axis", async () => {
  const points = [...curve(30, 0), { step: 400, loss: Number.NaN }, { step: 410, loss: Number.POSITIVE_INFINITY }];
  const svg = await lossChartSvg([{ name: "nan", points: [...points, { step: 420, loss: 0 }] }], { logY: true });
  assert.ok(lineRuns(svg).includes("nan"));
  assert.ok(!/NaN|Infinity/.test(svg));
});

test("thins long series to maxPoints", async () => {
  const svg = await lossChartSvg([{ name: "long", points: curve(20000, 0) }], { maxPoints: 200, smooth: 50 });
  for (const d of svg.matchAll(/<g class="mark-line role-mark[^>]*><path[^>]*\sd="([^"]+)"/g)) {
    assert.ok((d[1].match(/L/g) ?? []).length <= 201);
  }
});

test("each chart gets its own clip-path ids; a given prefix makes the SVG reproducible", async () => {
  const a = await lossChartSvg([{ name: "a", points: curve(10, 0) }]);
  const b = await lossChartSvg([{ name: "a", points: curve(10, 0) }]);
  const fixed = () => lossChartSvg([{ name: "a", points: curve(10, 0) }], { idPrefix: "x-" });
  assert.equal(await fixed(), await fixed());
  assert.match(await fixed(), /<clipPath id="x-1">/);
  const ids = (s: string) => [...s.matchAll(/id="([^"]+)"/g)].map((m) => m[1]);
  assert.ok(ids(a).length > 0);
  assert.equal(ids(a).filter((id) => ids(b).includes(id)).length, 0);
  for (const m of a.matchAll(/url\(#([^)]+)\)/g)) assert.ok(ids(a).includes(m[1]), m[1]);
});

test("ema starts at the first value and follows alpha = 2/(window+1)", () => {
  assert.deepEqual(ema([1, 2, 3], 1), [1, 2, 3]);
  const s = ema([0, 3, 3], 2);
  assert.equal(s.length, 3);
  for (const [got, want] of s.map((v, i) => [v, [0, 2, 8 / 3][i]])) assert.ok(Math.abs(got - want) < 1e-12);
  assert.deepEqual(ema([], 5), []);
});

test("bar chart draws one bar per metric and model, and copes with no data", async () => {
  const svg = await barChartSvg(
    [
      { metric: "clip", model: "base", value: 30.1 },
      { metric: "clip", model: "lora", value: 31.4 },
      { metric: "fid", model: "base", value: 100 },
      { metric: "fid", model: "lora", value: Number.NaN },
    ],
    { title: "Eval" },
  );
  assert.match(svg, /^<svg/);
  const bars = [...svg.matchAll(/<g class="mark-rect role-mark[^>]*>(.*?)<\/g>/gs)].flatMap((g) => [
    ...g[1].matchAll(/<path[^>]*aria-label="([^"]*)"/g),
  ]);
  assert.equal(bars.length, 3);
  assert.match(await barChartSvg([]), /^<svg/);
});

test("a bar panel whose values are all zero labels its axis 0, not 0.000000", async () => {
  const svg = await barChartSvg([
    { model: "a", metric: "identity", value: 0 },
    { model: "b", metric: "identity", value: 0 },
  ]);
  const labels = [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
  assert.ok(labels.includes("0"), labels.join(" | "));
  assert.ok(!labels.some((l) => /^0\.0+$/.test(l)), labels.join(" | "));
});
