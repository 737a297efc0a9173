// The HTML report: self-contained (no remote src/href, images as data: URLs),
// loss curves as Vega SVG, escaped user text, and report.html + eval.json on disk.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { imageGrid } from "../../src/report/grid.js";
import { escapeHtml, formatDuration, type ReportData, renderReport, writeReport } from "../../src/report/html.js";
import { tempDir } from "../helpers.js";

const dir = tempDir("atelier-report-");
after(() => rmSync(dir, { recursive: true, force: true }));

const losses = (n: number, offset: number) =>
  Array.from({ length: n }, (_, i) => ({ step: i, loss: 0.3 * Math.exp(-i / 20) + offset + 0.02 * Math.cos(i) }));
const grid = imageGrid(
  [0, 1, 2, 3].map((k) => ({ width: 8, height: 8, data: new Uint8Array(8 * 8 * 3).fill(40 * k) })),
  2,
  { scale: 4, gap: 2 },
);

function sample(): ReportData {
  return {
    title: "Atelier demo & <friends>",
    subtitle: "tiny model",
    createdAt: "2025-01-02T03:04:05Z",
    machine: "cpu x2",
    sections: [
      { heading: "About", text: "First paragraph with <b>tags</b>.\n\nSecond." },
      { heading: "Raw", html: "<p class='trusted'>trusted html</p>" },
    ],
    runs: [
      {
        name: "<script>alert(1)</script>",
        method: "lora",
        settings: { rank: 4, lr: 0.0001, "text encoder": false, prompt: 'a "sks" dog' },
        durationSeconds: 3723,
        losses: losses(120, 0),
        grids: [{ label: "after", png: grid, caption: "seed 1 <2>" }],
      },
      {
        name: "dreambooth",
        method: "full",
        settings: {},
        losses: losses(80, 0.05),
        grids: [],
      },
      { name: "no-loss", method: "ti", settings: {}, losses: [], grids: [] },
    ],
    evalTable: {
      columns: ["model", "CLIP score", "FID", "note"],
      rows: [
        { label: "base", values: [30.12345, 101.5, "ref"] },
        { label: "<lora>", values: [31.5, null, "ok"] },
      ],
    },
    eval: { metrics: { clip: [30.1, 31.5] }, note: "</script>" },
  };
}

test("has a Vega SVG with a line path for every run with losses", async () => {
  const html = await renderReport(sample());
  const svgs = [...html.matchAll(/<svg\b[^>]*class="marks"[^>]*>.*?<\/svg>/gs)].map((m) => m[0]);
  assert.equal(svgs.length, 2); // loss curves and eval bars
  const loss = svgs[0];
  for (const run of ["&lt;script&gt;alert(1)&lt;/script&gt;", "dreambooth"]) {
    const name = run.replace(/[()]/g, "\\$&");
    assert.match(
      loss,
      new RegExp(`<path[^>]*aria-label="[^"]*run: ${name}"[^>]*aria-roledescription="line mark" d="M`),
    );
  }
  assert.ok(!loss.includes("run: no-loss"));
});

test("loads nothing from the network: no http(s) in src= or href=, images are data: URLs", async () => {
  const html = await renderReport(sample());
  const refs = [...html.matchAll(/\b(?:src|href|xlink:href)\s*=\s*["']?([^"'\s>]*)/gi)].map((m) => m[1]);
  assert.ok(refs.length > 0);
  for (const ref of refs) assert.ok(!/^(?:https?:)?\/\//i.test(ref), `remote reference ${ref}`);
  assert.ok(!/\bsrc\s*=\s*["']?https?:/i.test(html));
  assert.ok(!/\bhref\s*=\s*["']?https?:/i.test(html));
  assert.ok(!/<script|<link\b|@import|url\(\s*['"]?https?:/i.test(html));
  const imgs = [...html.matchAll(/<img\b[^>]*\ssrc="([^"]*)"/g)].map((m) => m[1]);
  assert.equal(imgs.length, 1);
  assert.ok(imgs[0].startsWith("data:image/png;base64,"));
  assert.deepEqual(Buffer.from(imgs[0].slice("data:image/png;base64,".length), "base64"), Buffer.from(grid));
  assert.match(html, /Content-Security-Policy" content="default-src 'none'; img-src data:/);
});

test("escapes user text: run names, settings, captions, titles, the table and the embedded JSON", async () => {
  const html = await renderReport(sample());
  assert.ok(!html.includes("<script"));
  assert.ok(!html.includes("</script>"));
  assert.match(html, /<h2>&lt;script&gt;alert\(1\)&lt;\/script&gt;<span class="method">lora<\/span><\/h2>/);
  assert.match(html, /<title>Atelier demo &amp; &lt;friends&gt;<\/title>/);
  assert.match(html, /<td>a &quot;sks&quot; dog<\/td>/);
  assert.match(html, /<figcaption>seed 1 &lt;2&gt;<\/figcaption>/);
  assert.match(html, /<p>First paragraph with &lt;b&gt;tags&lt;\/b&gt;\.<\/p>\n<p>Second\.<\/p>/);
  assert.match(html, /<th>&lt;lora&gt;<\/th>/);
  assert.match(html, /&quot;note&quot;: &quot;&lt;\/script&gt;&quot;/);
  assert.ok(html.includes("<p class='trusted'>trusted html</p>")); // sections[].html is trusted
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
});

test("shows the eval table, settings and durations", async () => {
  const html = await renderReport(sample());
  assert.match(html, /<tr><th>model<\/th><th>CLIP score<\/th><th>FID<\/th><th>note<\/th><\/tr>/);
  assert.match(html, /<td class="num">30\.12<\/td><td class="num">101\.5<\/td><td>ref<\/td>/);
  assert.match(html, /<td>–<\/td>/);
  assert.match(html, /<th>duration<\/th><td>1h 02m 03s<\/td>/);
  assert.match(html, /<th>lr<\/th><td>0\.0001<\/td>/);
  assert.match(html, /<th>text encoder<\/th><td>false<\/td>/);
  assert.match(html, /<a href="eval\.json">eval\.json<\/a>/);
  assert.equal(formatDuration(125), "2m 05s");
  assert.equal(formatDuration(9.54), "9.5s");
});

test("a report with no losses, grids or eval still renders", async () => {
  const html = await renderReport({
    title: "empty",
    createdAt: "now",
    runs: [{ name: "r", method: "lora", settings: {}, losses: [], grids: [] }],
  });
  assert.match(html, /^<!doctype html>/);
  assert.ok(!html.includes("<svg"));
  assert.ok(!html.includes("eval.json"));
  assert.match(html, /No samples\./);
});

test("writeReport writes report.html and eval.json beside it", async () => {
  const out = join(dir, "nested", "demo");
  const data = sample();
  const path = await writeReport(out, data);
  assert.equal(path, join(out, "report.html"));
  assert.deepEqual(readdirSync(out).sort(), ["eval.json", "report.html"]);
  assert.equal(readFileSync(path, "utf8"), await renderReport(data)); // deterministic
  assert.match(readFileSync(path, "utf8"), /^<!doctype html>[\s\S]*<\/html>\n$/);
  assert.deepEqual(JSON.parse(readFileSync(join(out, "eval.json"), "utf8")), data.eval);

  const noEval = join(dir, "no-eval");
  await writeReport(noEval, { ...data, eval: undefined });
  assert.ok(existsSync(join(noEval, "report.html")));
  assert.ok(!existsSync(join(noEval, "eval.json")));
});
