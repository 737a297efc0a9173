// The self-contained HTML report of `atelier demo`: loss curves (Vega-Lite, as
// inline SVG), sample grids (PNG as data: URLs), run settings and the eval
// table, in one file that opens offline. No scripts, fonts or remote URLs; a
// Content-Security-Policy forbids loading anything but data: images. The eval
// JSON is written beside the report as eval.json and linked from it.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { writeTextAtomic } from "../formats/atomic-write.js";
import { type BarDatum, barChartSvg, lossChartSvg } from "./charts.js";

export interface ReportSection {
  heading: string;
  /** Trusted HTML, inserted as is (the CSP still blocks scripts and remote loads). */
  html?: string;
  /** Plain text, escaped; blank lines separate paragraphs. */
  text?: string;
}

export interface ReportGrid {
  label: string;
  /** PNG bytes (see imageGrid). */
  png: Uint8Array;
  caption?: string;
}

export interface ReportRun {
  name: string;
  method: string;
  settings: Record<string, string | number | boolean>;
  durationSeconds?: number;
  losses: { step: number; loss: number }[];
  grids: ReportGrid[];
}

export interface EvalTable {
  /** Metric names, one per value; or, with one more entry than values, the label column's heading first. */
  columns: string[];
  rows: { label: string; values: (number | null | string)[] }[];
}

export interface ReportData {
  title: string;
  subtitle?: string;
  createdAt: string;
  machine?: string;
  sections?: ReportSection[];
  runs: ReportRun[];
  evalTable?: EvalTable;
  /** The evaluation JSON: writeReport saves it as eval.json beside the report, which links to it. */
  eval?: unknown;
}

/** The report's file name and the eval JSON's, inside the directory given to writeReport. */
export const REPORT_FILE = "report.html";
export const EVAL_FILE = "eval.json";

/** Eval JSON up to this size is also shown inside the page. */
const INLINE_EVAL_MAX = 256 * 1024;

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text made safe for HTML element content and quoted attribute values. */
export function escapeHtml(text: string): string {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Numbers to 4 significant digits (integers whole), null as a dash, strings as they are. */
export function formatValue(v: number | string | null | undefined | boolean): string {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    if (!Number.isFinite(v)) return String(v);
    return String(Number(v.toPrecision(4)));
  }
  return String(v);
}

/** 3723 → "1h 02m 03s"; 125 → "2m 05s"; 9.5 → "9.5s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return String(seconds);
  if (seconds < 60) return `${Number(seconds.toFixed(1))}s`;
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}h ${pad(m)}m ${pad(s % 60)}s` : `${m}m ${pad(s % 60)}s`;
}

const CSS = `
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1f2933;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 20px 48px}
header h1{margin:0 0 4px;font-size:26px}
.sub{margin:0;color:#52606d}
.meta{margin:6px 0 0;color:#7b8794;font-size:13px}
section,article{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:16px 20px;margin:20px 0}
h2{margin:0 0 12px;font-size:19px}
h3{margin:16px 0 8px;font-size:16px}
.method{display:inline-block;margin-left:8px;padding:1px 8px;border-radius:10px;background:#e0e8f9;color:#243b53;font-size:12px;font-weight:600;vertical-align:middle}
table{border-collapse:collapse;font-size:14px;margin:4px 0}
th,td{border-bottom:1px solid #e4e7eb;padding:4px 12px 4px 0;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{color:#52606d;font-weight:600}
.chart{overflow-x:auto}
.chart svg{max-width:100%;height:auto}
figure{margin:12px 0}
figure img{display:block;max-width:100%;height:auto;image-rendering:pixelated;border:1px solid #e4e7eb}
figcaption{color:#52606d;font-size:13px;margin-top:4px}
pre{background:#f5f7fa;padding:10px;border-radius:6px;overflow:auto;max-height:400px;font-size:12px}
.muted{color:#7b8794}
nav a{margin-right:12px}
`;

const esc = escapeHtml;

function textToHtml(text: string): string {
  return text
    .split(/\n\s*\n/)
    .filter((p) => p.trim() !== "")
    .map((p) => `<p>${esc(p.trim()).replace(/\n/g, "<br>")}</p>`)
    .join("\n");
}

function pngDataUrl(png: Uint8Array): string {
  return `data:image/png;base64,${Buffer.from(png.buffer, png.byteOffset, png.byteLength).toString("base64")}`;
}

function lossSummary(losses: readonly { step: number; loss: number }[]): string {
  const finite = losses.filter((p) => Number.isFinite(p.loss));
  if (finite.length === 0) return losses.length ? `${losses.length} steps, no finite loss` : "no loss recorded";
  const ordered = [...finite].sort((a, b) => a.step - b.step);
  const min = Math.min(...finite.map((p) => p.loss));
  const parts = [
    `${losses.length} points`,
    `first ${formatValue(ordered[0].loss)}`,
    `last ${formatValue(ordered[ordered.length - 1].loss)}`,
    `min ${formatValue(min)}`,
  ];
  if (finite.length < losses.length) parts.push(`${losses.length - finite.length} non-finite`);
  return parts.join(" · ");
}

function runHtml(run: ReportRun, i: number): string {
  const settings = Object.entries(run.settings);
  const rows = [
    ...(run.durationSeconds !== undefined ? [["duration", formatDuration(run.durationSeconds)]] : []),
    ["loss", lossSummary(run.losses)],
    ...settings.map(([k, v]) => [k, formatValue(v)]),
  ];
  const table = `<table>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("")}</table>`;
  const grids = run.grids
    .map(
      (g) =>
        `<figure><h3>${esc(g.label)}</h3><img src="${pngDataUrl(g.png)}" alt="${esc(`${run.name}: ${g.label}`)}">` +
        (g.caption ? `<figcaption>${esc(g.caption)}</figcaption>` : "") +
        "</figure>",
    )
    .join("\n");
  return (
    `<article id="run-${i + 1}"><h2>${esc(run.name)}<span class="method">${esc(run.method)}</span></h2>\n` +
    `${table}\n${grids || '<p class="muted">No samples.</p>'}</article>`
  );
}

function evalTableHtml(t: EvalTable): string {
  const width = Math.max(0, ...t.rows.map((r) => r.values.length));
  const labelHead = t.columns.length === width + 1 ? t.columns[0] : "";
  const metrics = t.columns.length === width + 1 ? t.columns.slice(1) : t.columns;
  const head = `<tr><th>${esc(labelHead)}</th>${metrics.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
  const body = t.rows
    .map((r) => {
      const cells = r.values.map(
        (v) => `<td${typeof v === "number" ? ' class="num"' : ""}>${esc(formatValue(v))}</td>`,
      );
      return `<tr><th>${esc(r.label)}</th>${cells.join("")}</tr>`;
    })
    .join("\n");
  return `<table>${head}\n${body}</table>`;
}

/** The eval table's numeric cells as bars: metric × model (row label). */
function evalBars(t: EvalTable): BarDatum[] {
  const width = Math.max(0, ...t.rows.map((r) => r.values.length));
  const metrics = t.columns.length === width + 1 ? t.columns.slice(1) : t.columns;
  const out: BarDatum[] = [];
  for (const r of t.rows) {
    r.values.forEach((v, j) => {
      if (typeof v === "number" && Number.isFinite(v))
        out.push({ metric: metrics[j] ?? `#${j + 1}`, model: r.label, value: v });
    });
  }
  return out;
}

function evalJsonText(value: unknown): string {
  return `${JSON.stringify(value, null, 2) ?? "null"}\n`;
}

/** The report as one HTML document. Links to eval.json when `data.eval` is given (writeReport writes it). */
export async function renderReport(data: ReportData): Promise<string> {
  const parts: string[] = [];
  const meta = [`Created ${esc(data.createdAt)}`, ...(data.machine ? [`on ${esc(data.machine)}`] : [])].join(" ");
  parts.push(
    `<header><h1>${esc(data.title)}</h1>` +
      (data.subtitle ? `<p class="sub">${esc(data.subtitle)}</p>` : "") +
      `<p class="meta">${meta}</p></header>`,
  );
  if (data.runs.length > 1) {
    const links = data.runs.map((r, i) => `<a href="#run-${i + 1}">${esc(r.name)}</a>`).join("");
    parts.push(`<nav>${links}</nav>`);
  }
  for (const s of data.sections ?? []) {
    parts.push(`<section><h2>${esc(s.heading)}</h2>\n${s.html ?? ""}${s.text ? textToHtml(s.text) : ""}</section>`);
  }

  const withLoss = data.runs.filter((r) => r.losses.length > 0);
  if (withLoss.length > 0) {
    const svg = await lossChartSvg(
      withLoss.map((r) => ({ name: r.name, points: r.losses })),
      {
        idPrefix: "loss-",
      },
    );
    parts.push(`<section><h2>Training loss</h2><div class="chart">${svg}</div></section>`);
  }

  if (data.evalTable || data.eval !== undefined) {
    const inner: string[] = [];
    if (data.evalTable) {
      inner.push(evalTableHtml(data.evalTable));
      const bars = evalBars(data.evalTable);
      if (bars.length > 0) inner.push(`<div class="chart">${await barChartSvg(bars, { idPrefix: "eval-" })}</div>`);
    }
    if (data.eval !== undefined) {
      const json = evalJsonText(data.eval);
      inner.push(`<p>Full results: <a href="${EVAL_FILE}">${EVAL_FILE}</a></p>`);
      if (json.length <= INLINE_EVAL_MAX) {
        inner.push(`<details><summary>${EVAL_FILE}</summary><pre>${esc(json)}</pre></details>`);
      }
    }
    parts.push(`<section><h2>Evaluation</h2>\n${inner.join("\n")}</section>`);
  }

  data.runs.forEach((r, i) => {
    parts.push(runHtml(r, i));
  });

  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>${esc(data.title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
${parts.join("\n")}
</main>
</body>
</html>
`;
}

/**
 * Writes `dir`/report.html (and `dir`/eval.json from `data.eval`, first, so the
 * link is never dangling), each atomically; creates `dir`. Returns the report's path.
 */
export async function writeReport(dir: string, data: ReportData): Promise<string> {
  const html = await renderReport(data);
  mkdirSync(dir, { recursive: true });
  if (data.eval !== undefined) writeTextAtomic(join(dir, EVAL_FILE), evalJsonText(data.eval));
  const path = join(dir, REPORT_FILE);
  writeTextAtomic(path, html);
  return path;
}
