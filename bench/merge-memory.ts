// Peak memory of merging a LoRA into an SD1.5-size checkpoint (issue 16):
// the streaming pass (src/tools/merge-lora.ts) should peak well under 1.5×
// the checkpoint's size. The checkpoint is bench/models_load.ts's
// makeCheckpoint file (1130 tensors, small random weights); the LoRA is a
// rank-8 kohya LoRA on every attention / MLP layer kohya targets (192 UNet +
// 72 text-encoder modules). Each merge runs in a fresh child process and
// reports its peak RSS (getrusage ru_maxrss).
//
//   node dist/bench/merge-memory.js [--dtype f16|f32] [--dir DIR] [--keep]
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randn, scope, type Tensor } from "../src/engine/index.js";
import { saveSafetensors } from "../src/formats/safetensors.js";
import { extractTargets } from "../src/tools/extract-lora.js";
import { mergeLorasIntoCheckpoint } from "../src/tools/merge-lora.js";
import { say } from "./common.js";
import { FIXTURES } from "./models_common.js";
import { makeCheckpoint } from "./models_load.js";

const self = fileURLToPath(import.meta.url);

function child(ckpt: string, lora: string, out: string): void {
  const t0 = Date.now();
  const r = mergeLorasIntoCheckpoint(ckpt, [{ path: lora, weight: 0.8 }], out, { overwrite: true });
  const maxRss = process.resourceUsage().maxRSS * 1024;
  console.log(JSON.stringify({ maxRss, seconds: (Date.now() - t0) / 1000, changed: r.weightsChanged }));
}

function makeLora(path: string): number {
  const keys = JSON.parse(readFileSync(join(FIXTURES, "models", "sd15_diffusers_keys.json"), "utf8"));
  const toMap = (o: Record<string, { shape: number[] }>) =>
    new Map(Object.entries(o).map(([k, v]) => [k, v.shape as readonly number[]]));
  const targets = extractTargets({ unet: toMap(keys.unet), textEncoder: toMap(keys.text_encoder) }, false);
  scope(() => {
    const t = new Map<string, Tensor>();
    for (const m of targets) {
      const [out, inp] = m.shape;
      const k = m.shape.length === 4 ? [1, 1] : [];
      t.set(`${m.name}.lora_down.weight`, randn([8, inp, ...k]).mul(0.01));
      t.set(`${m.name}.lora_up.weight`, randn([out, 8, ...k]).mul(0.01));
      t.set(`${m.name}.alpha`, randn([]).abs().add(4));
    }
    saveSafetensors(path, t, { ss_network_module: "networks.lora" });
  });
  return targets.length;
}

function main(argv: string[]): void {
  if (argv[0] === "--child") {
    child(argv[1], argv[2], argv[3]);
    return;
  }
  const dtype = argv.includes("--dtype") ? (argv[argv.indexOf("--dtype") + 1] as "f16" | "f32") : "f16";
  const dir = argv.includes("--dir") ? argv[argv.indexOf("--dir") + 1] : join(tmpdir(), "atelier-bench-merge");
  const ckpt = join(dir, `sd15-${dtype}.safetensors`);
  const lora = join(dir, "lora-r8.safetensors");
  const out = join(dir, `merged-${dtype}.safetensors`);
  if (!existsSync(ckpt)) makeCheckpoint(ckpt, dtype, say);
  const modules = makeLora(lora);
  const size = statSync(ckpt).size;
  say(`merge-memory: ${ckpt} (${(size / 1e9).toFixed(2)} GB), LoRA of ${modules} modules`);
  const r = spawnSync(process.execPath, [self, "--child", ckpt, lora, out], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  const m = JSON.parse(r.stdout.trim().split("\n").pop()!);
  const line = `checkpoint ${dtype} ${(size / 1e9).toFixed(2)} GB, ${modules} LoRA modules: peak RSS ${(m.maxRss / 1e9).toFixed(2)} GB = ${(m.maxRss / size).toFixed(2)}× the checkpoint; ${m.seconds.toFixed(1)} s, ${m.changed} weights changed`;
  console.log(line);
  if (!argv.includes("--keep")) rmSync(out, { force: true });
}

main(process.argv.slice(2));
