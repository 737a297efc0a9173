// Flag parsing for the CLI: node:util parseArgs in strict mode (unknown flags
// are errors), plus typed conversion whose errors name the flag.
import { parseArgs } from "node:util";

export type FlagSpec = Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>;

export class UsageError extends Error {}

export function parse(argv: string[], flags: FlagSpec, positionals: { min: number; max: number; names: string }) {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options: flags, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const n = parsed.positionals.length;
  if (n < positionals.min || n > positionals.max) {
    throw new UsageError(
      `expected ${positionals.names}, got ${n} argument(s)${n ? `: ${parsed.positionals.join(" ")}` : ""}`,
    );
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals };
}

/** A string flag's value, or undefined when absent. */
export function str(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

export function required(values: Record<string, unknown>, name: string): string {
  const v = str(values, name);
  if (v === undefined || v === "") throw new UsageError(`--${name} is required`);
  return v;
}

/** A numeric flag; `integer` refuses fractions; the message names the flag. */
export function num(
  values: Record<string, unknown>,
  name: string,
  o: { integer?: boolean; min?: number; max?: number } = {},
): number | undefined {
  const v = str(values, name);
  if (v === undefined) return undefined;
  const x = Number(v);
  const bad =
    v.trim() === "" ||
    !Number.isFinite(x) ||
    (o.integer && !Number.isSafeInteger(x)) ||
    (o.min !== undefined && x < o.min) ||
    (o.max !== undefined && x > o.max);
  if (bad) {
    const range = [o.min !== undefined ? `>= ${o.min}` : "", o.max !== undefined ? `<= ${o.max}` : ""].filter(Boolean);
    throw new UsageError(
      `--${name} must be ${o.integer ? "an integer" : "a number"}${range.length ? ` ${range.join(" and ")}` : ""}, got '${v}'`,
    );
  }
  return x;
}

export function oneOf<T extends string>(
  values: Record<string, unknown>,
  name: string,
  allowed: readonly T[],
): T | undefined {
  const v = str(values, name);
  if (v === undefined) return undefined;
  if (!allowed.includes(v as T)) throw new UsageError(`--${name} must be one of ${allowed.join(", ")}, got '${v}'`);
  return v as T;
}
