// The Lab page's report endpoint: a report written by the library
// (src/report/html.ts writeReport: eval table, sample grids) is served for
// the page to show, under a sandboxing Content-Security-Policy; paths out
// of outputs/ and runs/, traversal, absolute paths and non-reports refused.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { writeReport } from "../../src/report/html.js";
import { type Studio, startStudio } from "../../src/server/studio.js";
import { call, studioDirs } from "./studio-helper.js";

const dirs = studioDirs("atelier-studio-lab-");
let studio: Studio;
let base: string;
before(async () => {
  studio = await startStudio({ workspace: dirs.workspace, port: 0 });
  base = studio.url;
});
after(async () => {
  await studio?.close();
});

test("a lab report is listed and served sandboxed; bad paths refused", async () => {
  await writeReport(join(dirs.workspace, "outputs", "lab"), {
    title: "lab of test",
    createdAt: "2026-12-03T00:00:00Z",
    runs: [],
    evalTable: { columns: ["run", "clip"], rows: [{ label: "zq-run", values: [0.1234567] }] },
    eval: { runs: ["zq-run"] },
  });
  writeFileSync(join(dirs.outside, "x.html"), "<p>outside</p>");
  const list = (await call(base, "GET", "/api/lab")).body as unknown as { path: string }[];
  assert.deepEqual(list.map((f) => f.path).sort(), ["outputs/lab/eval.json", "outputs/lab/report.html"]);
  const res = await fetch(new URL("/api/lab/report?path=outputs/lab/report.html", base));
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  assert.match(res.headers.get("content-security-policy") ?? "", /^sandbox; default-src 'none'/);
  const html = await res.text();
  assert.match(html, /zq-run/);
  assert.match(html, /0\.1235/);
  for (const [p, status] of [
    ["../outside/x.html", 400],
    [join(dirs.outside, "x.html"), 400],
    ["outputs/lab/eval.json", 400],
    ["models/x.html", 400],
    ["outputs/none.html", 404],
  ] as const) {
    const r = await call(base, "GET", `/api/lab/report?path=${encodeURIComponent(p)}`);
    assert.equal(r.status, status, `${p}: ${JSON.stringify(r.body)}`);
    if (status === 400) assert.equal(r.body.field, "query.path");
  }
  assert.equal((await call(base, "GET", "/api/lab/report")).status, 400);
});
