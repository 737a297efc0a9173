// Writing a safetensors file one tensor at a time: the header is planned
// from the names, dtypes and shapes up front, then each tensor is produced,
// written and freed, so a checkpoint-sized output never sits in memory whole
// (the merge tools' streaming pass). Same layout as formats/safetensors.ts
// saveSafetensors: compact header, __metadata__ first, data sorted by
// alignment then name; written atomically.
import { BYTES, type DType, scope, type Tensor } from "../engine/index.js";
import { writeAll, writeFileAtomic } from "../formats/atomic-write.js";
import { ALIGN_RANK } from "../formats/safetensors.js";
import { DTYPE_TO_FILE } from "../formats/safetensors-header.js";

export interface PlannedTensor {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

/**
 * Writes `planned` tensors to `path`; `produce(name)` makes each one (in a
 * scope: what it makes is freed after the write). A produced tensor whose
 * dtype or shape differs from its plan is an error; on any error `path` is
 * left as it was.
 */
export function writeSafetensorsStream(
  path: string,
  planned: readonly PlannedTensor[],
  metadata: Record<string, string>,
  produce: (name: string) => Tensor,
): void {
  const order = [...planned].sort(
    (a, b) =>
      (ALIGN_RANK[b.dtype] ?? 0) - (ALIGN_RANK[a.dtype] ?? 0) ||
      Buffer.compare(Buffer.from(a.name, "utf8"), Buffer.from(b.name, "utf8")),
  );
  const pairs = (entries: [string, string][]) => entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",");
  const entries: [string, string][] = [];
  const mdKeys = Object.keys(metadata).sort();
  entries.push(["__metadata__", `{${pairs(mdKeys.map((k) => [k, JSON.stringify(metadata[k])]))}}`]);
  let offset = 0;
  const sizes: number[] = [];
  for (const p of order) {
    const n = p.shape.reduce((a, b) => a * b, 1) * BYTES[p.dtype];
    sizes.push(n);
    const info = { dtype: DTYPE_TO_FILE[p.dtype], shape: p.shape, data_offsets: [offset, offset + n] };
    entries.push([p.name, JSON.stringify(info)]);
    offset += n;
  }
  const raw = Buffer.from(`{${pairs(entries)}}`, "utf8");
  const header = Buffer.alloc(raw.length + ((8 - (raw.length % 8)) % 8), 0x20);
  raw.copy(header);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.length));
  writeFileAtomic(path, (fd) => {
    writeAll(fd, prefix);
    writeAll(fd, header);
    order.forEach((p, i) => {
      scope(() => {
        let t = produce(p.name);
        if (t.dtype !== p.dtype || t.shape.join(",") !== p.shape.join(","))
          throw new Error(
            `${path}: tensor ${p.name} came out ${t.dtype} [${t.shape}], planned ${p.dtype} [${p.shape}]`,
          );
        if (t.device !== "cpu") t = t.cpu();
        t = t.contiguous();
        if (sizes[i] === 0) return;
        t.withBytes((bytes) => {
          if (bytes.byteLength !== sizes[i]) throw new Error(`${path}: tensor ${p.name}: ${bytes.byteLength} bytes`);
          writeAll(fd, bytes);
        });
      });
    });
  });
}
