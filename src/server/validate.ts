// Request bodies and query values, checked against small JSON Schemas: the
// same objects are the OpenAPI document's schemas (openapi.ts), so the
// document and the checks cannot drift apart. Only the subset the API uses
// (object, string, integer, number, boolean, array; enum, pattern, bounds) is
// understood; every error names the field (`body.scheduler`). Training
// configs are not checked here: the trainer's own schema does that
// (loadTrainConfig), with the messages the CLI gives.

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The field at fault, dotted, when one is. */
    readonly field?: string,
  ) {
    super(message);
  }
}

export type JsonSchema =
  | {
      type: "object";
      properties: Record<string, JsonSchema>;
      required?: string[];
      additionalProperties?: boolean;
      description?: string;
    }
  | {
      type: "string";
      enum?: readonly string[];
      pattern?: string;
      minLength?: number;
      maxLength?: number;
      description?: string;
    }
  | { type: "integer" | "number"; minimum?: number; maximum?: number; description?: string }
  | { type: "boolean"; description?: string }
  | { type: "array"; items: JsonSchema; maxItems?: number; description?: string };

function kindOf(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "number" && !Number.isFinite(v)) return String(v);
  return `a ${typeof v}`;
}

/** Throws HttpError 400 naming the first field that does not match; returns the value typed. */
export function check<T>(schema: JsonSchema, value: unknown, at = "body"): T {
  const fail = (why: string): never => {
    throw new HttpError(400, `${at}: ${why}`, at);
  };
  switch (schema.type) {
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value))
        fail(`must be an object, got ${kindOf(value)}`);
      const o = value as Record<string, unknown>;
      for (const r of schema.required ?? []) {
        if (o[r] === undefined) throw new HttpError(400, `${at}.${r}: is required`, `${at}.${r}`);
      }
      for (const [k, v] of Object.entries(o)) {
        const s = schema.properties[k];
        if (!s) {
          if (schema.additionalProperties) continue;
          const known = Object.keys(schema.properties).join(", ");
          throw new HttpError(400, `${at}.${k}: unknown field (known: ${known})`, `${at}.${k}`);
        }
        if (v !== undefined) check(s, v, `${at}.${k}`);
      }
      return value as T;
    }
    case "string": {
      if (typeof value !== "string") fail(`must be a string, got ${kindOf(value)}`);
      const s = value as string;
      if (schema.enum && !schema.enum.includes(s))
        fail(`must be one of ${schema.enum.join(", ")}, got ${JSON.stringify(s)}`);
      if (schema.minLength !== undefined && s.length < schema.minLength)
        fail(schema.minLength === 1 ? "must not be empty" : `must be at least ${schema.minLength} characters`);
      if (schema.maxLength !== undefined && s.length > schema.maxLength)
        fail(`must be at most ${schema.maxLength} characters`);
      if (schema.pattern && !new RegExp(schema.pattern).test(s))
        fail(`must match ${schema.pattern}, got ${JSON.stringify(s)}`);
      return value as T;
    }
    case "integer":
    case "number": {
      if (typeof value !== "number" || !Number.isFinite(value)) fail(`must be a number, got ${kindOf(value)}`);
      const n = value as number;
      if (schema.type === "integer" && !Number.isInteger(n)) fail(`must be a whole number, got ${n}`);
      if (schema.minimum !== undefined && n < schema.minimum) fail(`must be at least ${schema.minimum}, got ${n}`);
      if (schema.maximum !== undefined && n > schema.maximum) fail(`must be at most ${schema.maximum}, got ${n}`);
      return value as T;
    }
    case "boolean":
      if (typeof value !== "boolean") fail(`must be true or false, got ${kindOf(value)}`);
      return value as T;
    case "array": {
      if (!Array.isArray(value)) fail(`must be an array, got ${kindOf(value)}`);
      const a = value as unknown[];
      if (schema.maxItems !== undefined && a.length > schema.maxItems)
        fail(`must hold at most ${schema.maxItems} items`);
      for (const [i, v] of a.entries()) check(schema.items, v, `${at}[${i}]`);
      return value as T;
    }
  }
}

/** A name usable as a folder or file stem: what model, dataset and job names must be. */
export const NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";
export const nameSchema = (description: string): JsonSchema => ({
  type: "string",
  pattern: NAME_PATTERN,
  description,
});
