// OUTPUT_DIR/manifest.json: every artifact a run writes (path, kind, step,
// epoch, format), rewritten atomically after each write, so that a crash
// never leaves it naming a half-written file. keep_last prunes the oldest
// artifacts of a kind, and only those this manifest lists.
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join, relative } from "node:path";
import { writeTextAtomic } from "../formats/atomic-write.js";

export type ArtifactKind =
  | "checkpoint"
  | "lora"
  | "embedding"
  | "hypernetwork"
  | "diffusers"
  | "state"
  | "samples"
  | "config"
  | "log";

export interface Artifact {
  /** Relative to the output folder. */
  path: string;
  kind: ArtifactKind;
  step: number;
  epoch: number;
  format: string;
  created: string;
}

interface ManifestFile {
  version: 1;
  run: Record<string, unknown>;
  artifacts: Artifact[];
}

export class RunManifest {
  readonly path: string;
  #data: ManifestFile;

  /** Opens OUTPUT_DIR/manifest.json (continuing it when it exists: a resumed run). */
  constructor(
    readonly outputDir: string,
    run: Record<string, unknown> = {},
  ) {
    this.path = join(outputDir, "manifest.json");
    if (existsSync(this.path)) {
      const parsed = JSON.parse(readFileSync(this.path, "utf8")) as ManifestFile;
      if (parsed.version !== 1 || !Array.isArray(parsed.artifacts)) {
        throw new Error(`${this.path}: not an Atelier run manifest`);
      }
      this.#data = { ...parsed, run: { ...parsed.run, ...run } };
    } else {
      this.#data = { version: 1, run, artifacts: [] };
    }
    this.#write();
  }

  get artifacts(): readonly Artifact[] {
    return this.#data.artifacts;
  }

  /** Records an artifact already written (and complete) at `absPath`. */
  add(absPath: string, a: Omit<Artifact, "path" | "created">): Artifact {
    const entry: Artifact = { ...a, path: relative(this.outputDir, absPath), created: new Date().toISOString() };
    this.#data.artifacts = this.#data.artifacts.filter((x) => x.path !== entry.path);
    this.#data.artifacts.push(entry);
    this.#write();
    return entry;
  }

  /** Keeps the newest `keep` artifacts of a kind (by step); deletes the files of the others. */
  prune(kind: ArtifactKind, keep: number): string[] {
    if (!(keep > 0)) return [];
    const ofKind = this.#data.artifacts.filter((a) => a.kind === kind).sort((a, b) => a.step - b.step);
    const drop = ofKind.slice(0, Math.max(0, ofKind.length - keep));
    if (drop.length === 0) return [];
    // The manifest forgets them first: a crash mid-delete leaves files, never dangling entries.
    this.#data.artifacts = this.#data.artifacts.filter((a) => !drop.includes(a));
    this.#write();
    for (const a of drop) rmSync(join(this.outputDir, a.path), { recursive: true, force: true });
    return drop.map((a) => a.path);
  }

  /** The newest artifact of a kind, if any. */
  latest(kind: ArtifactKind): Artifact | undefined {
    return [...this.#data.artifacts].filter((a) => a.kind === kind).sort((a, b) => b.step - a.step)[0];
  }

  #write(): void {
    writeTextAtomic(this.path, `${JSON.stringify(this.#data, null, 2)}\n`);
  }
}
