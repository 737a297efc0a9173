// Training sample grids render the sample prompts with the configured
// embeddings and hypernetwork folders (sample.embeddings_dir /
// sample.hypernetwork_dir, A1111's --embeddings-dir / --hypernetwork-dir):
// the word changes the picture; a missing folder is a config error; a file of
// the wrong width fails the grid naming the file, and nothing is written.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { saveEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { Generator, noGrad, normal_, zeros } from "../../src/engine/index.js";
import {
  disposeStableDiffusion,
  loadStableDiffusion,
  type StableDiffusion,
} from "../../src/models/stable-diffusion.js";
import { loadTrainConfig } from "../../src/train/config.js";
import { saveSampleGrid } from "../../src/train/samples.js";
import { checkLeaks, sharedFixture, tempDir } from "../helpers.js";
import { TINY_TEXT_CONFIG, writeTinyCheckpoint } from "../tiny-model.js";

checkLeaks();

const root = tempDir("atelier-samples-");
const ckpt = join(root, "base.safetensors");
const instanceDir = join(root, "instance");
const good = join(root, "emb");
const wide = join(root, "emb-wide");
const tokenizer = sharedFixture("tokenizer");
let model: StableDiffusion;

before(() => {
  writeTinyCheckpoint(ckpt, 5);
  for (const d of [instanceDir, good, wide]) mkdirSync(d, { recursive: true });
  const g = new Generator(8);
  for (const [path, width] of [
    [join(good, "zqxv-style.pt"), TINY_TEXT_CONFIG.hiddenSize],
    [join(wide, "zqxv-style.pt"), TINY_TEXT_CONFIG.hiddenSize * 2],
  ] as const) {
    const t = noGrad(() => normal_(zeros([2, width]), 0, 1, g));
    saveEmbeddingFile(path, t);
    t.dispose();
  }
  g.dispose();
  model = loadStableDiffusion(ckpt, { tokenizerDir: tokenizer });
});
after(() => disposeStableDiffusion(model));

const config = (sample: Record<string, unknown>) =>
  loadTrainConfig({
    model: ckpt,
    tokenizer,
    method: "dreambooth",
    output_dir: join(root, "out"),
    resolution: 16,
    concepts: [{ instance_data_dir: instanceDir, instance_prompt: "a sks square" }],
    sample: { prompts: ["a zqxv-style square"], steps: 2, seed: 4, ...sample },
  });

test("sample.embeddings_dir: the sample prompt's word takes the folder's embedding", () => {
  const off = join(root, "off.png");
  const on = join(root, "on.png");
  saveSampleGrid(model, config({}), off);
  saveSampleGrid(model, config({ embeddings_dir: [good] }), on);
  assert.notDeepEqual(readFileSync(on), readFileSync(off));
  // the same folder again: the same picture (nothing left attached by the first grid)
  const again = join(root, "again.png");
  saveSampleGrid(model, config({ embeddings_dir: [good] }), again);
  assert.deepEqual(readFileSync(again), readFileSync(on));
});

test("sample folders: a missing one is a config error; a wrong-width file fails naming it, writing nothing", () => {
  assert.throws(
    () => config({ embeddings_dir: [join(root, "nope")] }),
    /sample\.embeddings_dir\[0\]: .*nope: no such folder/,
  );
  assert.throws(
    () => config({ hypernetwork_dir: [join(root, "nope-hn")] }),
    /sample\.hypernetwork_dir\[0\]: .*nope-hn: no such folder/,
  );
  const out = join(root, "wide.png");
  assert.throws(
    () => saveSampleGrid(model, config({ embeddings_dir: [wide] }), out),
    /emb-wide.zqxv-style\.pt: embedding width 64 does not fit this text encoder/,
  );
  assert.equal(existsSync(out), false);
});
