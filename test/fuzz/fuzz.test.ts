// A short, fixed-seed fuzz run of every reader (test/fuzz/targets/): no
// crashes, no hangs, no leaked tensors or file descriptors, no big
// allocations, and (for safetensors) agreement with the reference built from
// the Rust crate's rules. The long run is bench/fuzz.ts; its figures are in
// bench/RESULTS.md ("fuzz").
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { details, fuzz, type Tally, table } from "./tally.js";
import { makeTarget, TARGET_NAMES, type TargetName } from "./targets/index.js";

const SEED = 20261203;

/** Cases per target: a few thousand in all, well under a minute on two cores. */
const CASES: Record<TargetName, number> = { safetensors: 1500, ckpt: 1200, prompt: 1500, config: 800, png: 1000 };

/**
 * Whether the safetensors reader enforces the format as the Rust crate does
 * (contiguous offsets from 0, no trailing bytes, integers only, paired
 * surrogates, serde_json's nesting limit): it then accepts no file the
 * reference refuses. It turns true when the reader does.
 */
const EXPECT_STRICT_SAFETENSORS = true;

/**
 * What this fuzzer found in the readers as they are (bench/RESULTS.md,
 * "fuzz"). A listed count is reported as a todo rather than failing the run;
 * each entry goes when its reader is fixed, and the assertion then holds.
 */
const OPEN_FINDINGS: Partial<Record<TargetName, { crashes?: string; leaks?: string; rejectedValid?: string }>> = {};

const dir = mkdtempSync(join(tmpdir(), "atelier-fuzz-"));
const tallies: Tally[] = [];

after(() => {
  console.log(`fuzz, seed ${SEED}:\n${table(tallies)}\n${details(tallies)}`);
  rmSync(dir, { recursive: true, force: true });
});

for (const name of TARGET_NAMES) {
  describe(`fuzz ${name}`, () => {
    let t: Tally;
    before(() => {
      const started = performance.now();
      t = fuzz(makeTarget(name, { dir, profile: "ci" }), { seed: SEED, to: CASES[name] });
      tallies.push(t);
      console.log(`${name}: ${t.cases} cases in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    });
    const open = OPEN_FINDINGS[name];

    test("nothing but the reader's own errors escapes it", { todo: open?.crashes }, () => {
      assert.equal(t.crashes, 0, details([t]));
    });
    test(`no case takes over 5 s`, () => {
      assert.equal(t.hangs, 0, details([t]));
    });
    test("no case leaves a tensor or a file descriptor behind", { todo: open?.leaks }, () => {
      assert.equal(t.leaks, 0, details([t]));
    });
    test("no case grows memory by over 1 GB", () => {
      assert.equal(t.bigAllocations, 0, details([t]));
    });
    test("what is accepted agrees with the reference and survives its checks", () => {
      assert.equal(t.mismatches, 0, details([t]));
    });
    if (name === "safetensors") {
      const strict = EXPECT_STRICT_SAFETENSORS ? undefined : "the reader does not yet enforce the Rust crate's rules";
      test("accepts no file the reference refuses", { todo: strict }, () => {
        assert.equal(t.acceptedInvalid, 0, details([t]));
      });
      test("refuses no file the reference accepts, beyond its documented refusals", {
        todo: open?.rejectedValid,
      }, () => {
        assert.equal(t.rejectedValid, 0, details([t]));
      });
      test("the seeds and many mutants are accepted (the fuzzer reaches the tensor reads)", () => {
        assert.ok(t.accepted > CASES.safetensors / 10, `${t.accepted} accepted`);
      });
    }
  });
}

test("the fuzzer's crashing inputs, now refused by name: a 64-bit overflowing shape, a BigInt in a config", async () => {
  const { writeFileSync } = await import("node:fs");
  const { openSafetensors } = await import("../../src/formats/safetensors.js");
  const { loadTrainConfig } = await import("../../src/train/config.js");
  const header = Buffer.from(
    JSON.stringify({ a: { dtype: "U8", shape: [1099511627776, 1099511627776, 0], data_offsets: [0, 0] } }),
  );
  const file = join(dir, "overflow.safetensors");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(file, Buffer.concat([len, header]));
  assert.throws(() => openSafetensors(file), /overflows a 64-bit element count/);
  const raw = { model: "m", output_dir: "o", concepts: [{ instance_data_dir: "d", instance_prompt: "p" }], seed: 5n };
  assert.throws(() => loadTrainConfig(raw, [], { checkFiles: false }), /seed must be .*got the BigInt 5n/);
});
