// Rescuing an adapter file into the kohya layout that A1111, Forge and
// ComfyUI load: any file Atelier's reader takes (diffusers attn-processor
// and `unet.…lora.down` files, raw PEFT folders, cloneofsimo safetensors and
// list-of-tensors .pt files, kohya LyCORIS) is read into kohya modules and
// written with an explicit alpha per module (alpha = rank where the file had
// none: the same scale 1 every loader assumes then). cloneofsimo files carry
// textual-inversion tokens (`<s1>`) beside the LoRA: each is written as its
// own embedding file (`emb_params`, the single-tensor layout A1111's
// modules/textual_inversion/textual_inversion.py and ComfyUI load), named
// after the output and the token.
import { basename, dirname, extname, join } from "node:path";
import { loadLoraFile } from "../adapters/lora-file.js";
import { type DType, scope, type Tensor } from "../engine/index.js";
import { sniff } from "../formats/checkpoint-source.js";
import { openSafetensors, saveSafetensors } from "../formats/safetensors.js";
import { alphaTensor } from "./lora-math.js";
import { checkOutputPath, type KohyaLora, saveKohyaLora } from "./tool-io.js";

export interface RescueResult {
  /** The reader's name for the input's format. */
  format: string;
  modules: number;
  /** Embedding files written for the tokens the input carried: token → path. */
  embeddings: { token: string; path: string }[];
  /** Modules given alpha = rank because the input had no alpha. */
  alphaAdded: number;
}

/** `<s1>` → `s1`: a token as a file-name part. */
function tokenStem(token: string): string {
  const s = token.replace(/^<|>$/g, "").replace(/[^A-Za-z0-9_-]+/g, "_");
  return s || "token";
}

/** Converts `input` to a kohya LoRA at `output` (.safetensors); embeddings go beside it. */
export function rescueAdapter(
  input: string,
  output: string,
  o: { dtype?: DType; overwrite?: boolean } = {},
): RescueResult {
  checkOutputPath(output, [input], { layout: "lora", overwrite: o.overwrite });
  const file = loadLoraFile(input);
  const stem = basename(output, extname(output));
  const embeddings = file.ignored
    .filter((k) => /^<.*>$/.test(k))
    .map((token) => ({ token, path: join(dirname(output), `${stem}-${tokenStem(token)}.safetensors`) }));
  try {
    for (const e of embeddings) checkOutputPath(e.path, [input], { layout: "lora", overwrite: o.overwrite });
    let alphaAdded = 0;
    const lora: KohyaLora = new Map();
    const made: Tensor[] = [];
    for (const [name, m] of file.modules) {
      const copy = new Map(m);
      const down = m.get("lora_down.weight");
      if (down && !m.has("alpha")) {
        const a = alphaTensor(down.size(0));
        made.push(a);
        copy.set("alpha", a);
        alphaAdded++;
      }
      lora.set(name, copy);
    }
    try {
      const v2 = [...file.modules.values()].some((m) =>
        [...m.values()].some((t) => t.ndim === 2 && (t.shape[1] === 1024 || t.shape[0] === 1024)),
      );
      saveKohyaLora(
        output,
        lora,
        { atelier_rescued_from: JSON.stringify({ file: basename(input), format: file.format }) },
        { dtype: o.dtype, baseModelVersion: v2 ? "sd_v2" : "sd_v1" },
      );
    } finally {
      for (const t of made) t.dispose();
    }
    if (embeddings.length > 0 && sniff(file.path) === "safetensors") {
      const f = openSafetensors(file.path);
      try {
        for (const e of embeddings)
          scope(() => {
            let t = f.get(e.token).float();
            if (t.ndim === 1) t = t.unsqueeze(0);
            saveSafetensors(e.path, new Map([["emb_params", t]]), {
              atelier_rescued_from: JSON.stringify({ file: basename(input), token: e.token }),
            });
          });
      } finally {
        f.close();
      }
    }
    return { format: file.format, modules: file.modules.size, embeddings, alphaAdded };
  } finally {
    for (const m of file.modules.values()) for (const t of m.values()) t.dispose();
  }
}
