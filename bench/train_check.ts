// bench/train.ts --check: one tiny UNet, the same weights, LoRA init and
// noise draws on both sides (Atelier, bench/train_ref.py --check), 2 steps of
// each method; losses, every gradient and the updated weights compared.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { injectLora } from "../src/adapters/network.js";
import {
  disposeAll,
  Generator,
  noGrad,
  randn,
  scope,
  setNumThreads,
  type Tensor,
  torchVersion,
} from "../src/engine/index.js";
import { loadSafetensors, saveSafetensors } from "../src/formats/safetensors.js";
import { UNet2DConditionModel, unetPresets } from "../src/models/unet/index.js";
import { NoiseSchedule, SD15_SCHEDULER_CONFIG } from "../src/schedulers/index.js";
import { drawNoise } from "../src/train/losses.js";
import { type BaseOptions, type Json, say } from "./common.js";
import { fail, makeOptimizer, PRIOR_LOSS_WEIGHT, pyUnet, REF_SCRIPT, runChild, stepLoss } from "./train_common.js";

type CheckOptions = Pick<BaseOptions, "threads" | "device" | "python" | "cpus" | "json">;

const CHECK = { latent: 16, steps: 2, seed: 7, lr: { full: 1e-3, lora: 1e-3 }, rank: 4, alpha: 1 };

interface Diff {
  /** max |a − b| over every element of every tensor compared. */
  maxAbs: number;
  /** The largest max |a − b| / max |b| of one tensor (b: PyTorch's). */
  maxRel: number;
  worst: string;
  tensors: number;
}

function compare(mine: Map<string, Tensor>, theirs: Map<string, Tensor>, prefix: string): Diff {
  const d: Diff = { maxAbs: 0, maxRel: 0, worst: "", tensors: 0 };
  for (const [k, a] of mine) {
    const b = theirs.get(prefix + k);
    if (!b) fail(`check: PyTorch wrote no ${prefix + k}`, 1);
    scope(() => {
      const abs = a.sub(b.to(a.device)).abs().max().item();
      const scale = b.abs().max().item();
      const rel = scale > 0 ? abs / scale : abs;
      d.maxAbs = Math.max(d.maxAbs, abs);
      if (rel >= d.maxRel) [d.maxRel, d.worst] = [rel, k];
      d.tensors++;
    });
  }
  return d;
}

/** Tiny UNet, same weights, LoRA init and draws on both sides: 2 steps of each method compared. */
async function runCheck(o: CheckOptions, say: (s: string) => void): Promise<Json> {
  setNumThreads(o.threads);
  const dir = mkdtempSync(join(tmpdir(), "atelier-bench-train-"));
  const input = join(dir, "in.safetensors");
  const output = join(dir, "out.safetensors");
  const config = unetPresets.tiny;
  const spec = { ...CHECK, unet: pyUnet(config), optimizer: "adamw", prior_loss_weight: PRIOR_LOSS_WEIGHT };
  const schedule = new NoiseSchedule(SD15_SCHEDULER_CONFIG);
  try {
    // The inputs: weights, LoRA init, latents, context and every step's draws.
    scope(() => {
      const g = new Generator(3);
      const unet = new UNet2DConditionModel(config, { generator: g });
      const net = injectLora({ unet }, { rank: CHECK.rank, alpha: CHECK.alpha, generator: g });
      // lora_up starts at zero (so lora_down's first gradient is 0); small random values test more
      noGrad(() => {
        for (const [k, t] of net.stateDict())
          if (k.endsWith("lora_up.weight")) t.copy_(randn(t.shape, { generator: g }).mul(0.01));
      });
      const tensors = new Map<string, Tensor>();
      for (const [k, t] of net.stateDict()) if (!k.endsWith(".alpha")) tensors.set(`lora.${k}`, t);
      for (const [k, t] of unet.namedParameters()) tensors.set(`unet.${k}`, t);
      const latents = randn([2, 4, CHECK.latent, CHECK.latent], { generator: g });
      tensors.set("latents", latents);
      tensors.set("context", randn([2, 77, config.crossAttentionDim], { generator: g }));
      const draws = new Generator(CHECK.seed);
      for (const method of ["full", "lora"]) {
        for (let k = 0; k < CHECK.steps; k++) {
          const { noise, timesteps } = drawNoise(latents, schedule.numTrainTimesteps, { generator: draws });
          tensors.set(`${method}.noise${k}`, noise);
          tensors.set(`${method}.timesteps${k}`, timesteps);
        }
      }
      saveSafetensors(input, tensors, { spec: JSON.stringify(spec) });
      net.remove();
      unet.dispose();
      g.dispose();
      draws.dispose();
    });
    say(`check: PyTorch (${o.python}) on ${input}`);
    const argv = [REF_SCRIPT, "--check", input, output, "--threads", String(o.threads), "--device", o.device];
    const ref = (await runChild(o.python, argv, o, "PyTorch reference")).json;
    const { tensors: theirs } = loadSafetensors(output);
    const { tensors: src } = loadSafetensors(input);
    const results: Json = { torch: ref.torch, lora_modules: ref.lora_modules };
    let ok = true;
    try {
      for (const method of ["full", "lora"] as const) {
        scope(() => {
          const unet = new UNet2DConditionModel(config, { mode: "empty", device: o.device }).train();
          // clones: loading keeps the given storage, and the steps change it in place
          const weights = new Map(
            [...src].filter(([k]) => k.startsWith("unet.")).map(([k, t]) => [k.slice(5), t.clone()] as const),
          );
          unet.loadStateDict(weights);
          let named: Map<string, Tensor>;
          let network = null;
          if (method === "lora") {
            network = injectLora({ unet }, { rank: CHECK.rank, alpha: CHECK.alpha });
            named = new Map([...network.stateDict()].filter(([k]) => !k.endsWith(".alpha")));
            noGrad(() => {
              for (const [k, t] of named) t.copy_(src.get(`lora.${k}`)!);
            });
          } else {
            named = unet.namedParameters();
          }
          const optimizer = makeOptimizer("adamw", [...named.values()], CHECK.lr[method]);
          const latents = src.get("latents")!.to(o.device);
          const context = src.get("context")!.to(o.device);
          const steps: Json[] = [];
          for (let k = 0; k < CHECK.steps; k++) {
            scope(() => {
              const noise = src.get(`${method}.noise${k}`)!.to(o.device);
              const timesteps = src.get(`${method}.timesteps${k}`)!.to(o.device);
              const terms = stepLoss(unet, schedule, latents, context, noise, timesteps);
              terms.loss.backward();
              const mine = [terms.loss, terms.instance, terms.prior!].map((t) => t.item());
              const py = theirs.get(`${method}.loss${k}`)!.toArray();
              const lossRel = Math.max(...mine.map((v, i) => Math.abs(v - py[i]) / Math.abs(py[i])));
              const grads = new Map([...named].map(([n, p]) => [n, p.grad!]));
              const g = compare(grads, theirs, `${method}.grad${k}.`);
              const rng = ref[`${method}.rng_match${k}`] === true;
              ok &&= lossRel <= 1e-5 && g.maxRel <= 1e-4 && rng;
              steps.push({ loss: mine[0], pytorch_loss: py[0], loss_rel_diff: lossRel, grads: g, rng_match: rng });
              optimizer.step();
              optimizer.zeroGrad();
            });
          }
          const p = compare(named, theirs, `${method}.param.`);
          // one Adam step moves every weight by about ±lr; equal updates agree far below that
          ok &&= p.maxAbs <= CHECK.lr[method] * 1e-2;
          results[method] = { steps, params_after: p, trainable_tensors: named.size };
          optimizer.dispose();
          network?.remove();
          unet.dispose();
        });
      }
    } finally {
      disposeAll([theirs, src]);
    }
    results.ok = ok;
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** --check: runs the check, prints a line per step (with --json also its JSON on stdout); exits 1 where it fails. */
export async function checkMain(o: CheckOptions, out: (s: string) => void): Promise<void> {
  const r = await runCheck(o, say);
  out(`equality check, tiny UNet (libtorch ${torchVersion()} vs PyTorch ${r.torch}): ${r.ok ? "OK" : "FAILED"}`);
  const e = (x: number) => x.toExponential(1);
  for (const m of ["full", "lora"] as const) {
    const x = r[m] as { steps: (Json & { grads: Diff })[]; params_after: Diff };
    out(`${m}:`);
    for (const [k, st] of x.steps.entries()) {
      const g = st.grads;
      out(
        `  step ${k + 1}: loss ${st.loss} vs ${st.pytorch_loss} (rel ${e(st.loss_rel_diff as number)}), ` +
          `${g.tensors} grads max |Δ| ${e(g.maxAbs)}, max rel ${e(g.maxRel)}${g.maxRel > 0 ? ` (${g.worst})` : ""}` +
          `${st.rng_match ? "" : ", RNG DIFFERS"}`,
      );
    }
    const p = x.params_after;
    out(`  weights after ${CHECK.steps} AdamW steps: max |Δ| ${e(p.maxAbs)} (max rel ${e(p.maxRel)})`);
  }
  if (o.json) console.log(JSON.stringify(r));
  if (!r.ok) process.exit(1);
}
