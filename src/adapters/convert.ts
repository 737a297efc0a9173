// Other tools' LoRA layouts → kohya module names and keys, without copying
// tensors. diffusers and PEFT: huggingface/diffusers src/diffusers/utils/
// state_dict_utils.py (UNET_TO_DIFFUSERS, DIFFUSERS_OLD_TO_DIFFUSERS: the
// attention-processor era `…processor.to_q_lora.down.weight`, `.lora.down`,
// `.lora_linear_layer.down`, PEFT `lora_A`/`lora_B`) and
// loaders/lora_conversion_utils.py. cloneofsimo/lora (lora_diffusion/lora.py
// save_lora_weight, save_safeloras): numbered up/down pairs in the order its
// _find_modules walks the model, which is recovered here from the shapes.
import { full, type Tensor } from "../engine/index.js";
import { type Component, kohyaName, PREFIX } from "./targets.js";

/** kohya module name → its tensors under kohya keys. */
export type ModuleTensors = Map<string, Map<string, Tensor>>;

export class LoraFormatError extends Error {
  override name = "LoraFormatError";
}

/** The value at `key`, made and stored first when absent. */
export function entry<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) {
    v = make();
    map.set(key, v);
  }
  return v;
}

function put(out: ModuleTensors, name: string, key: string, t: Tensor, what: string): void {
  const m = entry(out, name, () => new Map<string, Tensor>());
  if (m.has(key)) throw new LoraFormatError(`${what}: two tensors map to ${name}.${key}`);
  m.set(key, t);
}

// ---- diffusers / PEFT -------------------------------------------------------------------

/** PEFT's adapter_config.json fields that change the scale. */
export interface PeftConfig {
  r?: number;
  lora_alpha?: number;
  rank_pattern?: Record<string, number>;
  alpha_pattern?: Record<string, number>;
  use_rslora?: boolean;
  use_dora?: boolean;
}

const DIFFUSERS_SUFFIX =
  /^(.*?)\.(?:(?:processor\.)?(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight|lora(?:_linear_layer)?\.(down|up)\.weight|lora_([AB])(?:\.[\w-]+)?\.weight|alpha|(lora_magnitude_vector))$/;

/** True when every key is a diffusers/PEFT LoRA key. */
export function isDiffusersLora(keys: readonly string[]): boolean {
  return keys.length > 0 && keys.every((k) => DIFFUSERS_SUFFIX.test(k)) && keys.some((k) => !k.endsWith(".alpha"));
}

/** Which network a diffusers/PEFT module path belongs to, and its path inside it. */
function splitComponent(path: string, what: string): { component: Component; path: string } {
  let p = path.startsWith("base_model.model.") ? path.slice("base_model.model.".length) : path;
  if (p.startsWith("text_encoder_2.") || p.startsWith("te2."))
    throw new LoraFormatError(
      `${what}: it adapts a second text encoder (text_encoder_2): an SDXL LoRA, not SD 1.x/2.x`,
    );
  if (p.startsWith("unet.")) return { component: "unet", path: p.slice(5) };
  if (p.startsWith("text_encoder.")) p = p.slice("text_encoder.".length);
  if (p.startsWith("text_model.")) return { component: "textEncoder", path: p };
  if (/^(down_blocks|up_blocks|mid_block|conv_in|conv_out|time_embedding)\./.test(p))
    return { component: "unet", path: p };
  throw new LoraFormatError(
    `${what}: cannot tell which network '${path}' is in (expected unet.…, text_encoder.… or diffusers UNet paths)`,
  );
}

/**
 * diffusers (old and new) and PEFT keys → kohya modules. Alphas come from
 * `….alpha` keys, else from PEFT's config, else alpha = rank (scale 1, the
 * diffusers default without network_alphas). A PEFT DoRA's magnitude becomes
 * the module's `dora_scale` on the output axis (magnitudesToDoraScale).
 */
export function convertDiffusers(tensors: Map<string, Tensor>, what: string, config?: PeftConfig): ModuleTensors {
  const out: ModuleTensors = new Map();
  const paths = new Map<string, { component: Component; path: string }>();
  for (const [key, t] of tensors) {
    const m = DIFFUSERS_SUFFIX.exec(key);
    if (!m) throw new LoraFormatError(`${what}: unexpected key '${key}'`);
    const [, head, attn, oldDir, dir, ab, magnitude] = m;
    const where = splitComponent(head, what);
    if (attn) {
      // state_dict_utils.py: to_out_lora → to_out.0 (UNet) / out_proj (text encoder); to_q_lora → to_q / q_proj
      const te = where.component === "textEncoder";
      const leaf = attn === "to_out" ? (te ? "out_proj" : "to_out.0") : te ? `${attn.slice(3)}_proj` : attn;
      where.path = `${where.path}.${leaf}`;
    }
    const name = kohyaName(PREFIX[where.component], where.path);
    paths.set(name, where);
    const direction = oldDir ?? dir ?? (ab === "A" ? "down" : "up");
    const kind = magnitude
      ? PEFT_MAGNITUDE
      : key.endsWith(".alpha")
        ? "alpha"
        : direction === "down"
          ? "lora_down.weight"
          : "lora_up.weight";
    put(out, name, kind, t, what);
  }
  magnitudesToDoraScale(out, what, config);
  if (config?.lora_alpha !== undefined) {
    for (const [name, m] of out) {
      const down = m.get("lora_down.weight");
      if (!down || m.has("alpha")) continue;
      const path = paths.get(name)!.path;
      const rank = down.size(0);
      const alpha = patternValue(config.alpha_pattern, path) ?? config.lora_alpha;
      // rsLoRA scales by alpha/√r; kohya's alpha/r gives the same with alpha·√r
      const kohyaAlpha = config.use_rslora ? alpha * Math.sqrt(rank) : alpha;
      m.set("alpha", full([], kohyaAlpha));
    }
  }
  return out;
}

/** PEFT's DoRA magnitude, held under its own name until magnitudesToDoraScale makes it a dora_scale. */
const PEFT_MAGNITUDE = "lora_magnitude_vector";

/**
 * PEFT's DoRA (huggingface/peft src/peft/tuners/lora/dora.py DoraLinearLayer /
 * DoraConv2dLayer): W' = m · (W0 + s·BA) / ‖W0 + s·BA‖, the norm taken per
 * output row (Linear: over dim 1, m saved as [out]; Conv2d: over dims 1–3, m
 * saved as [1, out, 1, 1]). That is LyCORIS' DoRA with wd_on_out, whose
 * dora_scale is [out, 1(, 1, 1)] (./dora.ts reads the axis from that shape).
 */
function magnitudesToDoraScale(out: ModuleTensors, what: string, config?: PeftConfig): void {
  let found = 0;
  for (const [name, m] of out) {
    const magnitude = m.get(PEFT_MAGNITUDE);
    if (!magnitude) continue;
    found++;
    const down = m.get("lora_down.weight");
    const up = m.get("lora_up.weight");
    if (!down || !up)
      throw new LoraFormatError(
        `${what}: module ${name} has a DoRA magnitude (lora_magnitude_vector) but no lora_A/lora_B`,
      );
    const rows = up.size(0);
    if (magnitude.numel !== rows)
      throw new LoraFormatError(
        `${what}: module ${name}: lora_magnitude_vector [${magnitude.shape}] holds ${magnitude.numel} values for a layer of ${rows} output rows (lora_B [${up.shape}])`,
      );
    m.delete(PEFT_MAGNITUDE);
    m.set("dora_scale", magnitude.reshape(rows, ...new Array<number>(down.ndim - 1).fill(1)));
  }
  if (config?.use_dora && found === 0)
    throw new LoraFormatError(
      `${what}: adapter_config.json says use_dora, but the file holds no lora_magnitude_vector`,
    );
}

/** PEFT rank_pattern / alpha_pattern: a key matches a module path that ends with it (peft tuners_utils). */
function patternValue(pattern: Record<string, number> | undefined, path: string): number | undefined {
  if (!pattern) return undefined;
  for (const [k, v] of Object.entries(pattern)) if (path === k || path.endsWith(`.${k}`)) return v;
  return undefined;
}

// ---- cloneofsimo ----------------------------------------------------------------------

interface Slot {
  component: Component;
  path: string;
  in: number;
  out: number;
}

/**
 * The Linear layers cloneofsimo's _find_modules visits in an SD 1.x/2.x UNet
 * (CrossAttention / Attention, optionally GEGLU), for one module order. Old
 * diffusers registered attn1, ff, attn2 in a block, and every diffusers UNet
 * lists down_blocks, up_blocks, then mid_block.
 */
function unetSlots(cross: number, order: { midLast: boolean; ffSecond: boolean; geglu: boolean }): Slot[] {
  const blocks: [string, number][] = [];
  for (const [i, d] of [320, 640, 1280].entries())
    for (const j of [0, 1]) blocks.push([`down_blocks.${i}.attentions.${j}`, d]);
  const up: [string, number][] = [];
  for (const [i, d] of [1280, 640, 320].entries())
    for (const j of [0, 1, 2]) up.push([`up_blocks.${i + 1}.attentions.${j}`, d]);
  const mid: [string, number] = ["mid_block.attentions.0", 1280];
  blocks.push(...(order.midLast ? [...up, mid] : [mid, ...up]));
  const slots: Slot[] = [];
  for (const [block, d] of blocks) {
    const p = `${block}.transformer_blocks.0`;
    const attn = (a: string, ctx: number) =>
      ["to_q", "to_k", "to_v", "to_out.0"].map((l) => ({
        component: "unet" as const,
        path: `${p}.${a}.${l}`,
        in: l === "to_k" || l === "to_v" ? ctx : d,
        out: d,
      }));
    const ff = order.geglu ? [{ component: "unet" as const, path: `${p}.ff.net.0.proj`, in: d, out: 8 * d }] : [];
    slots.push(
      ...attn("attn1", d),
      ...(order.ffSecond ? [...ff, ...attn("attn2", cross)] : [...attn("attn2", cross), ...ff]),
    );
  }
  return slots;
}

/** CLIP text encoder layers: self_attn k, v, q, out (transformers' registration order), with mlp fc1, fc2 when per = 6. */
function textSlots(width: number, count: number, per: 4 | 6): Slot[] | null {
  if (count % per !== 0) return null;
  const slots: Slot[] = [];
  for (let i = 0; i < count / per; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const l of ["k_proj", "v_proj", "q_proj", "out_proj"])
      slots.push({ component: "textEncoder", path: `${p}.self_attn.${l}`, in: width, out: width });
    if (per === 6) {
      slots.push({ component: "textEncoder", path: `${p}.mlp.fc1`, in: width, out: 4 * width });
      slots.push({ component: "textEncoder", path: `${p}.mlp.fc2`, in: 4 * width, out: width });
    }
  }
  return slots;
}

type Pair = { up: Tensor; down: Tensor };

function fits(pairs: Pair[], slots: Slot[]): boolean {
  return (
    pairs.length === slots.length &&
    pairs.every(
      ({ up, down }, i) =>
        up.ndim === 2 &&
        down.ndim === 2 &&
        up.size(0) === slots[i].out &&
        down.size(1) === slots[i].in &&
        up.size(1) === down.size(0),
    )
  );
}

function layoutFor(pairs: Pair[], component: Component | null): Slot[] | null {
  if (component !== "textEncoder") {
    for (const cross of [768, 1024])
      for (const midLast of [true, false])
        for (const ffSecond of [true, false])
          for (const geglu of [true, false]) {
            const slots = unetSlots(cross, { midLast, ffSecond, geglu });
            if (fits(pairs, slots)) return slots;
          }
  }
  if (component !== "unet" && pairs.length > 0) {
    for (const per of [4, 6] as const) {
      const slots = textSlots(pairs[0].down.size(1), pairs.length, per);
      if (slots && fits(pairs, slots)) return slots;
    }
  }
  return null;
}

function describe(pairs: Pair[]): string {
  return pairs
    .slice(0, 6)
    .map((p, i) => `${i}: up [${p.up.shape}] down [${p.down.shape}]`)
    .join(", ");
}

/** cloneofsimo pairs of one network (or of unknown network, for a bare list) → kohya modules. */
export function convertCloneofsimo(pairs: Pair[], component: Component | null, what: string, out: ModuleTensors): void {
  const slots = layoutFor(pairs, component);
  if (!slots) {
    const part = component === "unet" ? "UNet " : component === "textEncoder" ? "text encoder " : "";
    throw new LoraFormatError(
      `${what}: ${pairs.length} cloneofsimo ${part}LoRA layers that fit no SD 1.x/2.x module order (${describe(pairs)}, …)`,
    );
  }
  // cloneofsimo's LoraInjectedLinear has scale 1: no alpha (alpha = rank)
  pairs.forEach(({ up, down }, i) => {
    const name = kohyaName(PREFIX[slots[i].component], slots[i].path);
    put(out, name, "lora_down.weight", down, what);
    put(out, name, "lora_up.weight", up, what);
  });
}

const CLONEOFSIMO_KEY = /^(unet|text_encoder):(\d+):(up|down)$/;

export function isCloneofsimo(keys: readonly string[]): boolean {
  return keys.some((k) => CLONEOFSIMO_KEY.test(k));
}

/**
 * cloneofsimo safetensors (save_safeloras): `unet:{i}:up|down`,
 * `text_encoder:{i}:up|down`; other keys (its `<s1>` textual-inversion
 * tokens) are returned for the caller to report.
 */
export function convertCloneofsimoDict(
  tensors: Map<string, Tensor>,
  what: string,
): { modules: ModuleTensors; ignored: string[] } {
  const groups = new Map<Component, Map<number, Partial<Pair>>>();
  const ignored: string[] = [];
  for (const [key, t] of tensors) {
    const m = CLONEOFSIMO_KEY.exec(key);
    if (!m) {
      if (/^<.*>$/.test(key)) {
        ignored.push(key);
        continue;
      }
      throw new LoraFormatError(`${what}: unexpected key '${key}' in a cloneofsimo LoRA`);
    }
    const component: Component = m[1] === "unet" ? "unet" : "textEncoder";
    const g = entry(groups, component, () => new Map<number, Partial<Pair>>());
    const pair = entry(g, Number(m[2]), (): Partial<Pair> => ({}));
    pair[m[3] as "up" | "down"] = t;
  }
  const modules: ModuleTensors = new Map();
  for (const [component, g] of groups) {
    const pairs: Pair[] = [];
    for (let i = 0; i < g.size; i++) {
      const p = g.get(i);
      if (!p?.up || !p.down)
        throw new LoraFormatError(
          `${what}: ${component === "unet" ? "unet" : "text_encoder"}:${i} lacks its up or down tensor`,
        );
      pairs.push(p as Pair);
    }
    convertCloneofsimo(pairs, component, what, modules);
  }
  return { modules, ignored };
}
