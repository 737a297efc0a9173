// Test helper: the tiny SD fixtures as component state dicts, and writers of
// .ckpt files and diffusers folders in other shapes than saveCheckpoint's.
import assert from "node:assert/strict";
import { disposeAll, isContiguous, type Tensor } from "../../src/engine/index.js";
import type { ComponentStateDicts } from "../../src/formats/checkpoint.js";
import { SD_VAE, SD15_TEXT, SD15_UNET, type SDConfigs } from "../../src/formats/keymaps/index.js";
import { loadSafetensors } from "../../src/formats/safetensors.js";
import { sharedFixture } from "../helpers.js";
import { bytesOf, PickleWriter, stateDictPickle, type TensorSpec, torchZip, writeTensor } from "./torch-builder.js";

export const TINY_LDM = sharedFixture("models/sd_tiny_ldm_single_file.safetensors");

export const TINY_CONFIGS: SDConfigs = {
  unet: {
    ...SD15_UNET,
    sampleSize: 8,
    layersPerBlock: 1,
    blockOutChannels: [32, 64],
    downBlockTypes: ["CrossAttnDownBlock2D", "DownBlock2D"],
    upBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D"],
    crossAttentionDim: 32,
  },
  vae: { ...SD_VAE, sampleSize: 16, blockOutChannels: [32, 64], layersPerBlock: 1 },
  textEncoder: {
    ...SD15_TEXT,
    vocabSize: 1000,
    hiddenSize: 32,
    intermediateSize: 37,
    numHiddenLayers: 2,
    numAttentionHeads: 4,
    projectionDim: 32,
  },
  textLayout: "clip",
};

/** The tiny diffusers-layout components (fixtures/models/*_tiny.safetensors); dispose with disposeAll. */
export function tinyComponents(): Required<ComponentStateDicts> {
  const load = (f: string) => loadSafetensors(sharedFixture(`models/${f}.safetensors`)).tensors;
  return { unet: load("unet_tiny"), vae: load("vae_tiny"), textEncoder: load("text_encoder_tiny") };
}

/** Same keys, shapes, dtypes and bytes. */
export function assertSameTensors(actual: Map<string, Tensor>, expected: Map<string, Tensor>, what: string): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), `${what}: keys`);
  for (const [k, e] of expected) {
    const a = actual.get(k)!;
    assert.equal(a.dtype, e.dtype, `${what}: ${k} dtype`);
    assert.deepEqual(a.shape, e.shape, `${what}: ${k} shape`);
    assert.ok(
      Buffer.from(bytesOf(a.toTypedArray())).equals(Buffer.from(bytesOf(e.toTypedArray()))),
      `${what}: ${k} bytes`,
    );
  }
}

const STORAGE: Record<string, string> = { float32: "FloatStorage", float16: "HalfStorage", int64: "LongStorage" };

/** Specs and storages for a flat state dict (one storage per tensor). */
function specsOf(tensors: Map<string, Tensor>, first = 0): { specs: TensorSpec[]; storages: Map<string, Uint8Array> } {
  const specs: TensorSpec[] = [];
  const storages = new Map<string, Uint8Array>();
  let i = first;
  for (const [name, t] of tensors) {
    assert.ok(isContiguous(t));
    const key = String(i++);
    const shape = t.shape;
    const stride = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
    specs.push({ name, key, storage: STORAGE[t.dtype], numel: t.numel, offset: 0, shape, stride });
    storages.set(key, bytesOf(t.toTypedArray()));
  }
  return { specs, storages };
}

/** A torch zip .ckpt of a flat state dict, optionally in Lightning's wrapper. */
export function ckptBytes(tensors: Map<string, Tensor>, lightning?: Record<string, number | string>): Buffer {
  const { specs, storages } = specsOf(tensors);
  return torchZip(stateDictPickle(specs, { lightning }), storages);
}

/** A ckpt whose `state_dict` is followed by a second dict holding more tensors (optimizer-like). */
export function ckptWithOptimizer(tensors: Map<string, Tensor>, extra: Map<string, Tensor>): Buffer {
  const a = specsOf(tensors);
  const b = specsOf(extra, a.specs.length);
  const w = new PickleWriter().proto(2).emptyDict().mark();
  w.str("global_step").int(875000).str("state_dict");
  w.global("collections", "OrderedDict").emptyTuple().reduce().mark();
  for (const t of a.specs) {
    w.str(t.name);
    writeTensor(w, t);
  }
  w.setitems();
  w.str("optimizer_states").emptyList().mark();
  for (const t of b.specs) writeTensor(w, t);
  w.appends();
  w.setitems().stop();
  return torchZip(w.bytes(), new Map([...a.storages, ...b.storages]));
}

export function disposeComponents(c: ComponentStateDicts): void {
  disposeAll(Object.values(c));
}
