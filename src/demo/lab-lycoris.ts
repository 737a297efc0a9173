// The LyCORIS runs of `atelier lab` (issue 14, item 4): the seed's claims about
// LoHa, LoKr, DoRA and LoCon, on the same subject, prompts, seeds and settings
// as the lab's `lora` run (rank 8, conv rank 8, lr 3e-3, batch 4, no prior),
// differing only in lora.algo (or, for lora-linear, in having no conv LoRA).
// Claims (docs/lab.md, "LyCORIS claims"):
//  7a. training loss ranks LoHa > LoCon > LoRA, and says little about the result;
//  7b. LoHa's pictures are greyer / foggier (saturation, contrast vs base and LoRA);
//  7c. LoCon loses edge detail and generalises worse (edge sharpness, prompt following).
import type { ExperimentSpec, SubjectData } from "./experiment.js";

export const LYCORIS_CLAIM = 7;

/** Run names (for `--only`), in the order they run. */
export const LYCORIS_RUNS = ["loha", "dora", "lokr", "lora-linear"] as const;

/** The LyCORIS runs, built on the lab's subject `sks`, with the lab's step count. */
export function lycorisSpecs(sks: SubjectData, steps: number): (ExperimentSpec & { claim: number })[] {
  const common = {
    method: "lora" as const,
    steps,
    batch: 4,
    learningRate: 3e-3,
    trainTextEncoder: true,
    seed: 1,
    rank: 8,
    subjects: [sks],
    classImages: 0,
    claim: LYCORIS_CLAIM,
  };
  return [
    { ...common, name: "loha", label: "LoHa rank 8 with convolutions (conv rank 8)", algo: "loha", convRank: 8 },
    { ...common, name: "dora", label: "DoRA: LoCon rank 8 + conv 8, weight-decomposed", algo: "dora", convRank: 8 },
    { ...common, name: "lokr", label: "LoKr rank 8 with convolutions (factor -1)", algo: "lokr", convRank: 8 },
    { ...common, name: "lora-linear", label: "LoRA rank 8, linear/attention layers only", convRank: 0 },
  ];
}
