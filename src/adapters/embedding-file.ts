// Textual-inversion embedding files, read and written as AUTOMATIC1111 does
// (AUTOMATIC1111/stable-diffusion-webui modules/textual_inversion/
// textual_inversion.py: `Embedding.save`, `EmbeddingDatabase.load_from_file`):
// * A1111 `.pt`: {string_to_token: {'*': 265}, string_to_param: {'*': [n, H]},
//   name, step, sd_checkpoint, sd_checkpoint_name};
// * a dict of one tensor: `emb_params` [n, H] (kohya sd-scripts
//   train_textual_inversion.py `save_weights`, .pt or .safetensors) or
//   diffusers' `learned_embeds` {'<token>': [H]} (.bin / .safetensors).
// * the LDM textual_inversion repo's `.pt` (EmbeddingManager.save):
//   {string_to_token, string_to_param} where string_to_param is a pickled
//   nn.ParameterDict, read through its `_parameters` as A1111's
//   `create_embedding_from_data` does (`getattr(param_dict, '_parameters',
//   param_dict)`); no name or step;
// * a bare tensor saved with torch.save ([n, H] or [H]): A1111 refuses it
//   ("Couldn't identify … as neither textual inversion embedding nor diffuser
//   concept"), Atelier reads the one tensor.
// The prompt word is the file's stem (A1111 names an embedding after its
// file, whatever `name` inside says).
import { existsSync } from "node:fs";
import { basename, extname } from "node:path";
import { disposeAll, scope, type Tensor } from "../engine/index.js";
import { loadTorchFile } from "../formats/ckpt.js";
import { PyObject } from "../formats/pickle-allow.js";
import { PtTensor, savePt } from "../formats/pt-write.js";
import { loadSafetensors, saveSafetensors } from "../formats/safetensors.js";

export class EmbeddingFileError extends Error {
  override name = "EmbeddingFileError";
}

/** One textual-inversion embedding: `vectors` [n, H] float32 (CPU), owned by the caller. */
export interface TextualEmbedding {
  /** The word a prompt uses: the file's stem. */
  name: string;
  vectors: Tensor;
  /** A1111's bookkeeping, when the file has it. */
  step: number | null;
  sdCheckpoint: string | null;
  sdCheckpointName: string | null;
  /** The file it came from, if any. */
  path?: string;
  /** Which layout the file had. */
  layout: "a1111" | "ldm" | "emb_params" | "diffusers" | "tensor";
}

export const EMBEDDING_EXTENSIONS = [".pt", ".bin", ".safetensors"] as const;

/** The key a bare tensor file's one tensor is kept under while it is read. */
const BARE = Symbol("bare tensor");

/** A1111's `string_to_token` constant (Embedding.save writes {'*': 265} whatever the token). */
const A1111_STRING_TO_TOKEN = 265;

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const int = (v: unknown): number | null => (typeof v === "number" && Number.isSafeInteger(v) ? v : null);

function isTensor(v: unknown): v is Tensor {
  return typeof v === "object" && v !== null && typeof (v as Tensor).withBytes === "function";
}

function dictOf(path: string, root: unknown): Map<unknown, unknown> {
  if (root instanceof Map) return root;
  throw new EmbeddingFileError(
    `${path}: holds ${Array.isArray(root) ? "a list" : typeof root}, not an embedding (a dict with string_to_param, emb_params or one token)`,
  );
}

/** A new [n, H] float32 copy of the file's tensor (the loaded tensors are disposed by the caller). */
function vectorsOf(path: string, t: Tensor, what: string): Tensor {
  if (t.dtype !== "float32" && t.dtype !== "float16" && t.dtype !== "bfloat16" && t.dtype !== "float64")
    throw new EmbeddingFileError(`${path}: ${what} is ${t.dtype}, not floating point`);
  if (t.shape.length === 1) return scope(() => t.unsqueeze(0).to("float32").clone());
  if (t.shape.length !== 2 || t.shape[0] < 1 || t.shape[1] < 1)
    throw new EmbeddingFileError(`${path}: ${what} has shape [${t.shape}], expected [vectors, width]`);
  return scope(() => t.to("float32").contiguous().clone());
}

/**
 * Reads an embedding file (.pt / .bin through the restricted unpickler,
 * .safetensors). Errors name the file; nothing in it is executed.
 */
export function loadEmbeddingFile(path: string): TextualEmbedding {
  const ext = extname(path).toLowerCase();
  if (!(EMBEDDING_EXTENSIONS as readonly string[]).includes(ext))
    throw new EmbeddingFileError(`${path}: not an embedding file (expected ${EMBEDDING_EXTENSIONS.join(", ")})`);
  if (!existsSync(path)) throw new EmbeddingFileError(`${path}: no such embedding file`);
  const name = basename(path, extname(path));
  const made: Tensor[] = [];
  let root: Map<unknown, unknown>;
  try {
    if (ext === ".safetensors") {
      const { tensors } = loadSafetensors(path);
      made.push(...tensors.values());
      root = new Map<unknown, unknown>(tensors);
    } else {
      const tree = loadTorchFile(path);
      const walk = (v: unknown): void => {
        if (isTensor(v)) made.push(v);
        else if (v instanceof PyObject) walk(v.state);
        else if (v instanceof Map) for (const x of v.values()) walk(x);
        else if (Array.isArray(v)) for (const x of v) walk(x);
      };
      walk(tree);
      root = isTensor(tree) ? new Map<unknown, unknown>([[BARE, tree]]) : dictOf(path, tree);
    }
  } catch (e) {
    disposeAll(made);
    if (e instanceof EmbeddingFileError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new EmbeddingFileError(msg.includes(path) ? msg : `${path}: ${msg}`);
  }
  try {
    if (root.has("string_to_param")) {
      let params = root.get("string_to_param");
      const ldm = params instanceof PyObject;
      if (params instanceof PyObject) {
        // an nn.ParameterDict: its parameters are the `_parameters` dict of its state
        const state = params.state;
        params = state instanceof Map ? state.get("_parameters") : undefined;
        if (!(params instanceof Map))
          throw new EmbeddingFileError(`${path}: string_to_param is a ParameterDict without _parameters`);
      }
      if (!(params instanceof Map) || params.size !== 1)
        throw new EmbeddingFileError(
          `${path}: string_to_param must hold exactly one tensor (the file has ${params instanceof Map ? params.size : "no dict of"} terms)`,
        );
      const [[, t]] = [...params];
      if (!isTensor(t)) throw new EmbeddingFileError(`${path}: string_to_param['*'] is not a tensor`);
      return {
        name,
        vectors: vectorsOf(path, t, "string_to_param['*']"),
        step: int(root.get("step")),
        sdCheckpoint: str(root.get("sd_checkpoint")),
        sdCheckpointName: str(root.get("sd_checkpoint_name")),
        path,
        layout: ldm ? "ldm" : "a1111",
      };
    }
    if (root.has("clip_g") && root.has("clip_l"))
      throw new EmbeddingFileError(`${path}: an SDXL embedding (clip_g + clip_l); Atelier's models are SD1 and SD2`);
    if (root.size !== 1) {
      const keys = [...root.keys()].slice(0, 5).map(String);
      throw new EmbeddingFileError(
        `${path}: not an embedding: expected string_to_param or one tensor, found ${root.size} entries (${keys.join(", ")})`,
      );
    }
    const [[key, t]] = [...root];
    if (!isTensor(t)) throw new EmbeddingFileError(`${path}: entry ${String(key)} is not a tensor`);
    return {
      name,
      vectors: vectorsOf(path, t, key === BARE ? "the file's tensor" : String(key)),
      step: null,
      sdCheckpoint: null,
      sdCheckpointName: null,
      path,
      layout: key === BARE ? "tensor" : key === "emb_params" ? "emb_params" : "diffusers",
    };
  } finally {
    disposeAll(made);
  }
}

export interface SaveEmbeddingOptions {
  step?: number | null;
  /** A1111's shorthash of the checkpoint trained on (sha256[:10]) and its name. */
  sdCheckpoint?: string | null;
  sdCheckpointName?: string | null;
}

function checkVectors(path: string, vectors: Tensor): void {
  if (vectors.shape.length !== 2 || vectors.shape[0] < 1 || vectors.shape[1] < 1)
    throw new EmbeddingFileError(`${path}: embedding vectors must be [vectors, width], got [${vectors.shape}]`);
}

/**
 * Writes an embedding as A1111's `Embedding.save` does (`.pt`, keys in its
 * order, the tensor saved with requires_grad as training leaves it) or as
 * the one-tensor `emb_params` safetensors A1111 and kohya read; chosen by
 * the extension. The word is the file's stem.
 */
export function saveEmbeddingFile(path: string, vectors: Tensor, o: SaveEmbeddingOptions = {}): void {
  checkVectors(path, vectors);
  const ext = extname(path).toLowerCase();
  const name = basename(path, extname(path));
  if (name === "")
    throw new EmbeddingFileError(`${path}: an embedding file needs a name (its stem is the prompt word)`);
  const v = scope(() => vectors.detach().to("float32").cpu().contiguous().clone());
  try {
    if (ext === ".safetensors") saveSafetensors(path, { emb_params: v });
    else if (ext === ".pt") {
      savePt(path, {
        string_to_token: { "*": A1111_STRING_TO_TOKEN },
        string_to_param: { "*": new PtTensor(v, true) },
        name,
        step: o.step ?? null,
        sd_checkpoint: o.sdCheckpoint ?? null,
        sd_checkpoint_name: o.sdCheckpointName ?? null,
      });
    } else throw new EmbeddingFileError(`${path}: embeddings are saved as .pt or .safetensors`);
  } finally {
    v.dispose();
  }
}
