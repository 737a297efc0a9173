#!/usr/bin/env node
// The `atelier` command: runs the compiled CLI (scripts/setup.sh builds it).
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const main = join(root, "dist", "src", "cli", "main.js");
if (!existsSync(main)) {
  console.error(`atelier: not built yet. Run \`bash scripts/setup.sh\` in ${root}.`);
  process.exit(1);
}
const { run } = await import(main);
process.exitCode = await run(process.argv.slice(2));
