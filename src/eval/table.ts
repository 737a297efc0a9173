// The report as a fixed-width text table for a terminal: one row per metric,
// the base model's value, the evaluated model's and the change, so a glance
// says what the fine-tune bought (identity, following) and what it cost
// (class preservation, bleed). The JSON (--json) has every detail.
import type { EvalReport } from "./evaluate.js";
import type { Scores } from "./score.js";

type Pick = (s: Scores) => number | null | undefined;

interface Row {
  label: string;
  pick: Pick;
  /** Which way is good, for the reader: "high", "low", or "" where neither is (diversity, distance). */
  better: "high" | "low" | "";
}

function rows(report: EvalReport): Row[] {
  const multi = report.subjects.length > 1;
  const out: Row[] = [{ label: "identity", pick: (s) => s.identity, better: "high" }];
  if (multi)
    for (const [i, sub] of report.subjects.entries())
      out.push({ label: `  ${sub.token}`, pick: (s) => s.identity_details?.per_subject[i]?.share, better: "high" });
  const cp = (f: (d: NonNullable<Scores["class_preservation_details"]>) => number | null): Pick => {
    return (s) => (s.class_preservation_details ? f(s.class_preservation_details) : null);
  };
  out.push(
    { label: "class preservation", pick: (s) => s.class_preservation, better: "high" },
    { label: "  shape fidelity", pick: cp((d) => d.shape_fidelity), better: "high" },
    { label: "  colour diversity", pick: cp((d) => d.colour_diversity), better: "" },
    { label: "  changed vs base", pick: cp((d) => d.changed), better: "low" },
    { label: "  subject-like", pick: cp((d) => d.subject_like), better: "low" },
    { label: "  pixel distance", pick: cp((d) => d.pixel_distance), better: "low" },
    { label: "prompt following", pick: (s) => s.prompt_following, better: "high" },
    { label: "  background only", pick: (s) => s.prompt_following_details?.background_accuracy, better: "high" },
    { label: "  seen backgrounds", pick: (s) => s.prompt_following_details?.seen, better: "high" },
    { label: "  new backgrounds", pick: (s) => s.prompt_following_details?.unseen, better: "high" },
  );
  if (multi)
    for (const [i, sub] of report.subjects.entries())
      out.push({
        label: `  ${sub.token}`,
        pick: (s) => s.prompt_following_details?.per_subject[i]?.share,
        better: "high",
      });
  out.push({ label: "bleed", pick: (s) => s.bleed, better: "low" });
  return out;
}

const value = (x: number | null | undefined): string => (x === null || x === undefined ? "n/a" : x.toFixed(3));

function change(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined) return "n/a";
  const d = b - a;
  const text = Math.abs(d).toFixed(3);
  return text === "0.000" ? " 0.000" : `${d > 0 ? "+" : "-"}${text}`;
}

function signatureText(s: EvalReport["subjects"][number]): string {
  const sig = s.signature;
  return `${s.token} = ${sig.colour} ${sig.shape}${sig.dot ? ` with a ${sig.dot} dot` : ""}`;
}

/** The report as a table with a few lines of context above it. */
export function formatEvalTable(report: EvalReport): string {
  const st = report.settings;
  const evaluated = st.lora ? `${st.model} + LoRA ${st.lora.path} (scale ${st.lora.scale})` : st.model;
  const lines = [
    `evaluated  ${evaluated}`,
    `base       ${st.base}`,
    `subjects   ${report.subjects.map(signatureText).join("; ")}`,
    `sampling   ${st.samples} samples per prompt × ${st.prompts} prompts, seed ${st.seed}, ${st.sampler}, ${st.steps} steps, cfg ${st.cfg}, ${st.width}x${st.height}`,
  ];
  if (st.same_model) lines.push("note       the evaluated model is the base itself: both columns are the same samples");
  lines.push("");
  const table = rows(report).map((r) => [
    r.label,
    value(r.pick(report.base)),
    value(r.pick(report.evaluated)),
    change(r.pick(report.base), r.pick(report.evaluated)),
    r.better,
  ]);
  const header = ["metric", "base", "evaluated", "change", "better"];
  const widths = header.map((h, c) => Math.max(h.length, ...table.map((r) => r[c].length)));
  // The label column is left-aligned, the numbers right-aligned so their decimals line up.
  const fmt = (r: string[]) =>
    r
      .map((cell, c) => (c === 0 || c === 4 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])))
      .join("  ")
      .trimEnd();
  lines.push(fmt(header), widths.map((w) => "-".repeat(w)).join("  "), ...table.map(fmt));
  return lines.join("\n");
}
