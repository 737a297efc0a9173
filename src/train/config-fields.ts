// The building blocks of the training config's schema: a field is its kind
// (what values it takes), its doc line and its default, and it carries the
// TypeScript type of its value, so the config's type is derived from the
// schema (Infer) instead of being declared a second time.

export type Kind =
  | { t: "int"; min: number; max?: number; multipleOf?: number }
  /** `above`: exclusive lower bound; `min`/`max`/`below`: inclusive / exclusive. */
  | { t: "number"; min?: number; above?: number; max?: number; below?: number }
  | { t: "bool" }
  | { t: "string"; nonEmpty?: boolean; pattern?: RegExp; patternDoc?: string }
  /** A file or folder, resolved against the config file's folder (flags: the current folder). */
  | { t: "path" }
  /** A path, or the name of a workspace model. */
  | { t: "model" }
  /** `anyCase`: "AdamW8bit" is taken as "adamw8bit" (names users copy from elsewhere). */
  | { t: "enum"; values: readonly string[]; refused?: Readonly<Record<string, string>>; anyCase?: boolean }
  | { t: "list"; of: Kind; unique?: boolean; nonEmpty?: boolean }
  | { t: "group"; fields: Schema }
  | { t: "objects"; fields: Schema };

/** A config field whose resolved value has type T. */
export interface Field<T = unknown> {
  kind: Kind;
  /** One line for the `--help` listing. */
  doc: string;
  /** The value when unset. Neither `default` nor `auto`: required. */
  default?: unknown;
  /** A default worked out from other fields (config.ts or the method's resolve), described in words. */
  auto?: string;
  /** null is a value (JSON null; the flag value `none`). */
  nullable?: boolean;
  /** Type-level only: the value's type. */
  readonly __value?: T;
}

export type Schema = Readonly<Record<string, Field>>;

/** The resolved value type of a schema: every field present. */
export type Infer<S extends Schema> = { -readonly [K in keyof S]: S[K] extends Field<infer T> ? T : never };

/** What every field builder takes besides its kind's own options. */
export interface Meta<T> {
  doc: string;
  default?: T;
  auto?: string;
}

const make = <T>(kind: Kind, m: Meta<T>): Field<T> => ({ kind, ...m });

/** Field builders: `f.int({ min: 1, default: 4, doc })` is a Field<number>. */
export const f = {
  int: (o: Meta<number> & { min: number; max?: number; multipleOf?: number }): Field<number> => {
    const { min, max, multipleOf, ...m } = o;
    return make({ t: "int", min, max, multipleOf }, m);
  },
  number: (o: Meta<number> & { min?: number; above?: number; max?: number; below?: number }): Field<number> => {
    const { min, above, max, below, ...m } = o;
    return make({ t: "number", min, above, max, below }, m);
  },
  bool: (m: Meta<boolean>): Field<boolean> => make({ t: "bool" }, m),
  text: (o: Meta<string> & { nonEmpty?: boolean; pattern?: RegExp; patternDoc?: string }): Field<string> => {
    const { nonEmpty, pattern, patternDoc, ...m } = o;
    return make({ t: "string", nonEmpty, pattern, patternDoc }, m);
  },
  path: (m: Meta<string>): Field<string> => make({ t: "path" }, m),
  model: (m: Meta<string>): Field<string> => make({ t: "model" }, m),
  oneOf: <V extends string>(
    values: readonly V[],
    o: Meta<V> & { refused?: Readonly<Record<string, string>>; anyCase?: boolean },
  ): Field<V> => {
    const { refused, anyCase, ...m } = o;
    return make({ t: "enum", values, refused, ...(anyCase ? { anyCase } : {}) }, m);
  },
  list: <T>(of: Field<T>, o: Meta<T[]> & { unique?: boolean; nonEmpty?: boolean }): Field<T[]> => {
    const { unique, nonEmpty, ...m } = o;
    return make({ t: "list", of: of.kind, unique, nonEmpty }, m);
  },
  group: <S extends Schema>(fields: S, doc: string): Field<Infer<S>> => make({ t: "group", fields }, { doc }),
  objects: <S extends Schema>(fields: S, doc: string): Field<Infer<S>[]> => make({ t: "objects", fields }, { doc }),
  /** The same field, with null allowed (and the default, when given). */
  nullable: <T>(field: Field<T>, o: { default?: T | null } = {}): Field<T | null> => ({
    ...field,
    nullable: true,
    ...("default" in o ? { default: o.default } : {}),
  }),
};

/** Words for a kind, as the listing says it. */
export function kindText(k: Kind): string {
  switch (k.t) {
    case "int": {
      const parts = [`integer >= ${k.min}`];
      if (k.max !== undefined) parts.push(`<= ${k.max}`);
      if (k.multipleOf) parts.push(`multiple of ${k.multipleOf}`);
      return parts.join(", ");
    }
    case "number": {
      const parts: string[] = [];
      if (k.above !== undefined) parts.push(`> ${k.above}`);
      if (k.min !== undefined) parts.push(`>= ${k.min}`);
      if (k.below !== undefined) parts.push(`< ${k.below}`);
      if (k.max !== undefined) parts.push(`<= ${k.max}`);
      return `number${parts.length ? ` ${parts.join(", ")}` : ""}`;
    }
    case "bool":
      return "true|false";
    case "string":
      return k.patternDoc ?? (k.nonEmpty ? "non-empty text" : "text");
    case "path":
      return "path";
    case "model":
      return "path or model name";
    case "enum":
      return k.values.join("|");
    case "list":
      return `list of ${kindText(k.of)}`;
    case "group":
      return "group";
    case "objects":
      return "list of tables";
  }
}

export interface FieldInfo {
  /** Dotted name; list entries as `concepts[].x`. */
  name: string;
  type: string;
  /** The default as JSON, or its rule in words; "required" when there is none. */
  default: string;
  doc: string;
}

/** Every leaf field of a schema with its type, default and doc line (help texts, the UI, tests). */
export function schemaFields(schema: Schema, prefix = ""): FieldInfo[] {
  const out: FieldInfo[] = [];
  for (const [name, fd] of Object.entries(schema)) {
    const full = `${prefix}${name}`;
    if (fd.kind.t === "group") out.push(...schemaFields(fd.kind.fields, `${full}.`));
    else if (fd.kind.t === "objects") out.push(...schemaFields(fd.kind.fields, `${full}[].`));
    else {
      const d = fd.default !== undefined ? JSON.stringify(fd.default) : (fd.auto ?? "required");
      out.push({ name: full, type: kindText(fd.kind), default: d, doc: fd.doc });
    }
  }
  return out;
}
