// kohya sd-scripts / LyCORIS `network_args` (KEY=VALUE strings, as
// train_network.py --network_args passes them to lycoris/kohya.py
// create_network) mapped to Atelier's lora.* fields. Each accepted spelling
// is logged with the field it set; one that contradicts a field set
// explicitly, an unknown key or a bad value is a config error naming it.
import type { Resolver } from "./method.js";

type Parse = (v: string) => unknown;
const num: Parse = (v) => (v.trim() === "" ? Number.NaN : Number(v));
const bool: Parse = (v) => {
  const t = v.trim().toLowerCase();
  return t === "true" || t === "1" ? true : t === "false" || t === "0" ? false : undefined;
};
const text: Parse = (v) => v.trim().toLowerCase();

/** network_args key → [the lora.* field, how its value reads]. */
export const NETWORK_ARGS: Readonly<Record<string, readonly [string, Parse]>> = {
  algo: ["algo", text],
  conv_dim: ["conv_rank", num],
  conv_alpha: ["conv_alpha", num],
  dropout: ["dropout", num],
  rank_dropout: ["rank_dropout", num],
  rank_dropout_scale: ["rank_dropout_scale", bool],
  module_dropout: ["module_dropout", num],
  factor: ["factor", num],
  decompose_both: ["decompose_both", bool],
  use_tucker: ["use_tucker", bool],
  use_cp: ["use_tucker", bool],
  dora_wd: ["weight_decompose", bool],
  wd_on_out: ["dora_on_output", bool],
  train_norm: ["train_norm", bool],
};

/** Keys LyCORIS knows that Atelier does not train, with why. */
const REFUSED: Readonly<Record<string, string>> = {
  preset: "Atelier trains kohya's default targets (attention and MLP; 3×3 convs with conv_dim), not LyCORIS presets",
  bypass_mode: "Atelier always trains in bypass mode and merges exactly",
  use_scalar: "LyCORIS use_scalar is not supported",
  rs_lora: "rsLoRA scaling is not supported",
};

function split(arg: string): [string, string] | null {
  const eq = arg.indexOf("=");
  return eq < 1 ? null : [arg.slice(0, eq).trim(), arg.slice(eq + 1).trim()];
}

/** Sets the lora.* fields the section's network_args name; throws a config error naming the argument. */
export function applyNetworkArgs(l: Record<string, unknown>, r: Resolver): void {
  const args = (l.network_args as string[] | undefined) ?? [];
  for (const arg of args) {
    const kv = split(arg);
    if (!kv) throw r.error("lora.network_args", `lora.network_args: '${arg}' is not KEY=VALUE`);
    const [key, raw] = kv;
    const refused = REFUSED[key];
    if (refused) throw r.error("lora.network_args", `lora.network_args ${key}: ${refused}`);
    const spec = NETWORK_ARGS[key];
    if (!spec)
      throw r.error(
        "lora.network_args",
        `lora.network_args: unknown argument '${key}' (known: ${Object.keys(NETWORK_ARGS).join(", ")})`,
      );
    const [field, parse] = spec;
    const value = parse(raw);
    if (value === undefined || (typeof value === "number" && !Number.isFinite(value)))
      throw r.error("lora.network_args", `lora.network_args ${key}=${raw}: not a valid value for lora.${field}`);
    const given = r.given(`lora.${field}`);
    if (given !== undefined && given !== value)
      throw r.error(`lora.${field}`, `lora.network_args ${key}=${raw} contradicts lora.${field} = ${String(given)}`);
    l[field] = value;
  }
}

/** One line per mapped argument: "network_args conv_dim=8 → lora.conv_rank = 8". */
export function networkArgNotes(args: readonly string[]): string[] {
  const out: string[] = [];
  for (const arg of args) {
    const kv = split(arg);
    const spec = kv && NETWORK_ARGS[kv[0]];
    if (kv && spec) out.push(`network_args ${kv[0]}=${kv[1]} → lora.${spec[0]} = ${String(spec[1](kv[1]))}`);
  }
  return out;
}
