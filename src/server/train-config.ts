// A training request's config → the TrainConfig the trainer runs: the
// studio places the run (output_dir = runs/NAME, workspace = models/atelier),
// confines every path field to the workspace, always saves resumable states
// (so a restart resumes), then lets the trainer's own loader check the rest,
// with the messages the CLI gives (the field named, dotted under
// body.config).
import { stringify as toToml } from "smol-toml";
import { ConfigError, loadTrainConfig, type TrainConfig, WorkspaceError } from "../index.js";
import { HttpError } from "./validate.js";
import { confine, LAYOUT } from "./workspace-files.js";

/** Fields the studio sets itself. */
const PLACED = ["workspace", "output_dir", "tokenizer"] as const;
const CONCEPT_PATHS = ["instance_data_dir", "class_data_dir"] as const;

export function studioConfig(root: string, name: string, raw: Record<string, unknown>): TrainConfig {
  const tree = structuredClone(raw);
  for (const k of PLACED) {
    if (tree[k] !== undefined) {
      throw new HttpError(
        400,
        `body.config.${k}: is set by the studio (runs/${name}); leave it out`,
        `body.config.${k}`,
      );
    }
  }
  if (Array.isArray(tree.concepts)) {
    tree.concepts = tree.concepts.map((c, i) => {
      if (typeof c !== "object" || c === null) return c;
      const out = { ...(c as Record<string, unknown>) };
      for (const k of CONCEPT_PATHS) {
        const field = `body.config.concepts[${i}].${k}`;
        if (typeof out[k] === "string") out[k] = confine(root, out[k] as string, field);
      }
      return out;
    });
  }
  if (typeof tree.model === "string" && (tree.model.includes("/") || tree.model.includes("\\"))) {
    tree.model = confine(root, tree.model, "body.config.model");
  }
  const save = (typeof tree.save === "object" && tree.save !== null ? tree.save : {}) as Record<string, unknown>;
  tree.save = { ...save, state: true };
  tree.workspace = confine(root, LAYOUT.models, "workspace");
  tree.output_dir = confine(root, `${LAYOUT.runs}/${name}`, "body.name");
  try {
    return loadTrainConfig(tree, [], { cwd: root });
  } catch (e) {
    if (e instanceof ConfigError) {
      const field = e.field ? `body.config.${e.field}` : "body.config";
      throw new HttpError(400, e.message, field);
    }
    if (e instanceof WorkspaceError) throw new HttpError(400, e.message, "body.config.model");
    throw e;
  }
}

/** Drops nulls (TOML has none: a field left out takes its default, null here). */
function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNulls);
  if (typeof v === "object" && v !== null) {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== null)
        .map(([k, x]) => [k, withoutNulls(x)]),
    );
  }
  return v;
}

/** The resolved config as the TOML `atelier train` reads. */
export function configToml(c: TrainConfig): string {
  return `# atelier train this.toml\n${toToml(withoutNulls(c) as Record<string, unknown>)}\n`;
}
