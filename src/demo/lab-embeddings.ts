// The lab's runs of AUTOMATIC1111's two classic methods and pivotal tuning
// (issue 15), on the same subject pictures, prompts, seeds and steps as the
// Dreambooth and LoRA rows of lab.ts:
//  5. Textual Inversion (only a new word's vectors learn), a hypernetwork
//     (small MLPs on the attentions' keys and values) and pivotal tuning
//     (the embedding and a UNet LoRA together), against Dreambooth and LoRA;
//  6. "Textual Inversion needs cleaner pictures": TI and Dreambooth each on
//     the subject's pictures degraded with noise and a colour cast (as the
//     dirty class pictures of claim 2), against the same runs on clean ones;
//  4. two subjects as two embeddings (one TI run each, used together) bleed
//     less than two subjects in one Dreambooth run (lab.ts's two-concepts).
// The embedding's word cannot be `sks`: that is one token of the tokenizer's
// vocabulary and an embedding may not replace it (diffusers refuses such
// words), so the TI rows use `sks-ti`, trained on the template line
// "a [name] star": exactly the prompt the Dreambooth rows train on.
import { join } from "node:path";
import { addNoise, colourCast } from "../shapes/degrade.js";
import { WorldRng } from "../shapes/rng.js";
import { type Image, writeSceneFolder } from "../shapes/world.js";
import type { ExperimentSpec, SubjectData } from "./experiment.js";

/** The runs this file adds to the lab, in the order they run. */
export const EMBEDDING_RUNS = ["ti", "hypernet", "pivotal", "ti-noisy", "db-noisy", "ti-two"] as const;

/** The word of the Textual Inversion rows (a new word: `sks` is in the vocabulary). */
export const TI_WORD = "sks-ti";
/** The second subject's embedding word (`zwx` is one token too). */
export const TI_WORD_2 = "zwx-ti";

const EMBEDDING = { initText: "star", vectors: 2, templates: ["a [name] star"] };

/** The subject's pictures with noise σ40 and a ±60 colour cast (as the lab's dirty class pictures), once. */
function writeNoisySubject(dir: string, s: SubjectData): SubjectData {
  const transform = (img: Image, i: number): Image => {
    const rng = new WorldRng(77, i, 3);
    return colourCast(addNoise(img, 40, rng), 60, rng);
  };
  writeSceneFolder(
    dir,
    s.scenes,
    { caption: { token: s.token, dropBackground: true }, transform },
    { token: s.token, kind: "subject, noise σ40 and a ±60 colour cast" },
  );
  return { ...s, dir };
}

/**
 * The runs of claims 5 and 6 for subject `sks` (lab.ts's first subject);
 * `db` holds the Dreambooth rows' shared settings (steps, batch, seed).
 */
export function embeddingSpecs(
  data: string,
  sks: SubjectData,
  zwx: SubjectData,
  db: Pick<ExperimentSpec, "steps" | "batch" | "seed" | "learningRate" | "trainTextEncoder">,
): (ExperimentSpec & { claim: number })[] {
  const noisy = writeNoisySubject(join(data, "sks-noisy"), sks);
  const word = (s: SubjectData, token = TI_WORD): SubjectData => ({ ...s, token });
  // Above A1111's defaults (5e-3 for an embedding, 1e-5 for a hypernetwork), which are tuned for
  // thousands of steps at batch 1; these runs have 300 at batch 4 (docs/lab.md has what they reached).
  const ti = {
    ...db,
    method: "textual_inversion" as const,
    learningRate: 2e-2,
    trainTextEncoder: false,
    classImages: 0,
    embedding: EMBEDDING,
  };
  return [
    { ...ti, claim: 5, name: "ti", label: "Textual Inversion, 2 vectors from 'star'", subjects: [word(sks)] },
    {
      ...db,
      claim: 5,
      name: "hypernet",
      label: "hypernetwork 1,2,1 (A1111), no prior",
      method: "hypernetwork",
      learningRate: 3e-3,
      trainTextEncoder: false,
      subjects: [sks],
      classImages: 0,
    },
    {
      ...ti,
      claim: 5,
      name: "pivotal",
      label: "pivotal tuning: TI + UNet LoRA rank 8, jointly",
      method: "pivotal",
      rank: 8,
      loraLearningRate: 3e-3,
      subjects: [word(sks)],
    },
    { ...ti, claim: 6, name: "ti-noisy", label: "Textual Inversion on noisy pictures", subjects: [word(noisy)] },
    {
      ...db,
      claim: 6,
      name: "db-noisy",
      label: "Dreambooth, no prior, on noisy pictures",
      method: "dreambooth",
      subjects: [noisy],
      classImages: 0,
    },
    {
      ...ti,
      claim: 4,
      name: "ti-two",
      label: "sks + zwx as two embeddings (a TI run each)",
      subjects: [word(sks), word(zwx, TI_WORD_2)],
    },
  ];
}
