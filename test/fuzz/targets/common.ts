// What every fuzz target is given: a scratch folder for the files it writes,
// and a profile (CI keeps inputs small and quick; the long run goes to
// sizes that take seconds and gigabytes).
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface TargetOptions {
  /** A folder the target may write its case files to. */
  dir: string;
  profile: "ci" | "long";
}

/**
 * Whether to make one of the costly cases (a gigabyte bomb, a 100 KB prompt): only in the long
 * profile, and rarely, so that a run of 100,000 cases holds a few dozen of them.
 */
export const costly = (rng: { chance(p: number): boolean }, o: TargetOptions, p = 3e-4): boolean =>
  o.profile === "long" && rng.chance(p);

/** The repository root (this file runs from dist/test/fuzz/targets/). */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
  return dir;
})();

/** The shared data beside the checkout, where it is present: real-world files and reference fixtures. */
export function existingFiles(o: TargetOptions, paths: readonly string[], maxBytes = 512 * 1024): string[] {
  return paths
    .map((p) => join(repoRoot, "..", "shared", p))
    .filter((p) => existsSync(p) && statSync(p).size <= (o.profile === "ci" ? 64 * 1024 : maxBytes));
}

/** A fixture kept in the repository (test/fixtures). */
export const repoFixture = (name: string): string => join(repoRoot, "test", "fixtures", name);
