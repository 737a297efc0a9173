// Charts for the HTML report, drawn by Vega-Lite and rendered headless to SVG
// (renderer "none": no canvas, no DOM, no native dependencies). Text widths are
// estimated by Vega without a canvas, which is good enough for axis labels.
import * as vega from "vega";
import type { TopLevelSpec } from "vega-lite";
import { compile } from "vega-lite";

export interface LossPoint {
  step: number;
  loss: number;
}

export interface LossSeries {
  name: string;
  points: LossPoint[];
}

export interface LossChartOptions {
  title?: string;
  /** EMA window in steps-of-the-series (alpha = 2 / (window + 1)); 0 or 1 draws the raw loss only. Default: about 1/20 of the longest series. */
  smooth?: number;
  /** Logarithmic loss axis (non-positive losses are left out). */
  logY?: boolean;
  width?: number;
  height?: number;
  /** Prefix of the SVG's element ids; give each chart in one page its own. Default: unique per call. */
  idPrefix?: string;
  /** Points drawn per series at most; longer series are thinned (min/max per bucket for the raw line). Default 1500. */
  maxPoints?: number;
}

export interface BarDatum {
  metric: string;
  model: string;
  value: number;
}

export interface BarChartOptions {
  title?: string;
  /** Width of one metric's panel. */
  panelWidth?: number;
  height?: number;
  /** Prefix of the SVG's element ids (see LossChartOptions.idPrefix). */
  idPrefix?: string;
}

const FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";

const CONFIG = {
  background: "white",
  font: FONT,
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: "#e5e7eb" },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 260 },
  title: { fontSize: 14, anchor: "start" as const },
  view: { stroke: "#d1d5db" },
};

/** Exponential moving average with alpha = 2 / (window + 1), started at the first value. */
export function ema(values: readonly number[], window: number): number[] {
  if (!(window > 1)) return [...values];
  const a = 2 / (window + 1);
  const out: number[] = [];
  let s = Number.NaN;
  for (const v of values) {
    s = Number.isNaN(s) ? v : a * v + (1 - a) * s;
    out.push(s);
  }
  return out;
}

/** Every k-th point (always keeping the last) so that at most `max` remain. */
function thin<T>(points: readonly T[], max: number): T[] {
  if (points.length <= max) return [...points];
  const k = Math.ceil(points.length / max);
  const out = points.filter((_, i) => i % k === 0);
  if ((points.length - 1) % k !== 0) out.push(points[points.length - 1]);
  return out;
}

/** The lowest and highest point of each bucket, in step order, so spikes survive thinning. */
function thinMinMax(points: readonly LossPoint[], max: number): LossPoint[] {
  if (points.length <= max) return [...points];
  const buckets = Math.max(1, Math.floor(max / 2));
  const size = Math.ceil(points.length / buckets);
  const out: LossPoint[] = [];
  for (let i = 0; i < points.length; i += size) {
    const b = points.slice(i, i + size);
    let lo = b[0];
    let hi = b[0];
    for (const p of b) {
      if (p.loss < lo.loss) lo = p;
      if (p.loss > hi.loss) hi = p;
    }
    if (lo === hi) out.push(lo);
    else out.push(...(lo.step <= hi.step ? [lo, hi] : [hi, lo]));
  }
  return out;
}

let chartCount = 0;

/**
 * Vega numbers clip paths and gradients with process-wide counters. Renumber
 * them per chart under a prefix, so that several inline SVGs in one page never
 * share an id and the same chart always renders to the same text.
 */
function renumberIds(svg: string, prefix: string): string {
  const ids = new Map<string, string>();
  return svg.replace(/(id="|url\(#)((?:clip|gradient_)\d+)/g, (_, head: string, id: string) => {
    let to = ids.get(id);
    if (to === undefined) {
      to = `${prefix}${ids.size + 1}`;
      ids.set(id, to);
    }
    return head + to;
  });
}

/** Compiles a Vega-Lite spec and renders it to an SVG string; `idPrefix` names its clip paths (default: unique per call). */
export async function renderVegaLite(spec: TopLevelSpec, idPrefix?: string): Promise<string> {
  const vgSpec = compile(spec).spec as vega.Spec;
  const view = new vega.View(vega.parse(vgSpec), { renderer: "none", logLevel: vega.Error });
  try {
    const svg = await view.toSVG();
    return renumberIds(svg, idPrefix ?? `vg${++chartCount}-`);
  } finally {
    view.finalize();
  }
}

/** Default EMA window: about 1/20 of the longest series, none for short ones. */
function defaultWindow(series: readonly LossSeries[]): number {
  const n = Math.max(0, ...series.map((s) => s.points.length));
  return n < 20 ? 0 : Math.min(200, Math.round(n / 20));
}

/**
 * Training loss per run: the raw loss as a faint line and its EMA as a solid
 * line in the same colour, one colour per run. Non-finite losses (NaN after a
 * divergence) are left out. Empty input draws empty axes.
 */
export async function lossChartSvg(series: readonly LossSeries[], o: LossChartOptions = {}): Promise<string> {
  const window = o.smooth ?? defaultWindow(series);
  const maxPoints = Math.max(10, o.maxPoints ?? 1500);
  const smoothed = window > 1;
  const raw: { run: string; step: number; loss: number }[] = [];
  const smooth: { run: string; step: number; loss: number }[] = [];
  const lone: { run: string; step: number; loss: number }[] = []; // a line of one point draws nothing
  for (const s of series) {
    const pts = s.points
      .filter((p) => Number.isFinite(p.step) && Number.isFinite(p.loss) && (!o.logY || p.loss > 0))
      .sort((a, b) => a.step - b.step);
    for (const p of thinMinMax(pts, maxPoints)) raw.push({ run: s.name, step: p.step, loss: p.loss });
    if (pts.length === 1) lone.push({ run: s.name, step: pts[0].step, loss: pts[0].loss });
    if (smoothed) {
      const ys = ema(
        pts.map((p) => p.loss),
        window,
      );
      const sm = pts.map((p, i) => ({ step: p.step, loss: ys[i] }));
      for (const p of thin(sm, maxPoints)) smooth.push({ run: s.name, step: p.step, loss: p.loss });
    }
  }
  const runs = [...new Set(series.map((s) => s.name))];
  const color = {
    field: "run",
    type: "nominal" as const,
    title: "run",
    scale: { domain: runs.length > 0 ? runs : ["(no runs)"] },
  };
  const x = { field: "step", type: "quantitative" as const, title: "step" };
  const y = {
    field: "loss",
    type: "quantitative" as const,
    title: o.logY ? "loss (log scale)" : "loss",
    scale: o.logY ? { type: "log" as const } : { zero: false },
  };
  const note = `faint: raw loss · solid: EMA over ${window} points`;
  const title = o.title
    ? { text: o.title, ...(smoothed ? { subtitle: note } : {}) }
    : smoothed
      ? { text: note, fontSize: 12, fontWeight: "normal" as const, color: "#52606d" }
      : undefined;
  const spec: TopLevelSpec = {
    ...(title ? { title } : {}),
    width: o.width ?? 640,
    height: o.height ?? 300,
    config: CONFIG,
    layer: [
      {
        data: { values: raw },
        mark: {
          type: "line",
          strokeWidth: smoothed ? 1 : 1.75,
          opacity: smoothed ? 0.3 : 1,
          clip: true,
        },
        encoding: { x, y, color, detail: { field: "run", type: "nominal" } },
      },
      {
        data: { values: smooth },
        mark: { type: "line", strokeWidth: 2, clip: true },
        encoding: { x, y, color, detail: { field: "run", type: "nominal" } },
      },
      {
        data: { values: lone },
        mark: { type: "point", filled: true, size: 40, clip: true },
        encoding: { x, y, color },
      },
    ],
  };
  return renderVegaLite(spec, o.idPrefix);
}

/**
 * Evaluation metrics as grouped bars: one panel per metric (each with its own
 * scale, since metrics differ in range), one bar per model, coloured by model.
 * Non-finite values are left out.
 */
export async function barChartSvg(data: readonly BarDatum[], o: BarChartOptions = {}): Promise<string> {
  const values = data.filter((d) => Number.isFinite(d.value)).map((d) => ({ ...d }));
  const models = [...new Set(data.map((d) => d.model))];
  const metrics = [...new Set(data.map((d) => d.metric))];
  const spec: TopLevelSpec = {
    ...(o.title ? { title: o.title } : {}),
    data: { values },
    config: CONFIG,
    facet: { field: "metric", type: "nominal", title: null, sort: metrics, header: { labelFontSize: 12 } },
    columns: 4,
    resolve: { scale: { y: "independent" } },
    spec: {
      width: o.panelWidth ?? Math.max(120, 28 * models.length),
      height: o.height ?? 200,
      mark: { type: "bar", tooltip: false },
      encoding: {
        x: { field: "model", type: "nominal", title: null, sort: models, axis: { labels: false, ticks: false } },
        // "~g": a panel of zeros reads 0, not 0.000000
        y: { field: "value", type: "quantitative", title: null, axis: { format: "~g" } },
        color: { field: "model", type: "nominal", title: "model", scale: { domain: models.length ? models : ["-"] } },
      },
    },
  };
  return renderVegaLite(spec, o.idPrefix);
}
