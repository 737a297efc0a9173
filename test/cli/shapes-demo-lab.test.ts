// `atelier demo`, `atelier lab` and `atelier shapes` refuse bad flags and
// missing inputs with an exit code and a message naming what was wrong,
// before any training starts (the runs themselves: test/demo, test/shapes).
import assert from "node:assert/strict";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { cli } from "../cli-helper.js";
import { tempDir } from "../helpers.js";

const dir = tempDir("atelier-cli-shapes-");
after(() => rmSync(dir, { recursive: true, force: true }));

test("demo and lab: bad flags exit 2 and name the flag", async () => {
  for (const command of ["demo", "lab"]) {
    const cases: [string[], RegExp][] = [
      [["--bogus"], /--bogus/],
      [["--steps", "0"], /--steps must be an integer >= 1/],
      [["--steps", "many"], /--steps must be an integer/],
      [["--samples", "1.5"], /--samples must be an integer/],
      [["extra"], /no arguments/],
    ];
    for (const [argv, re] of cases) {
      const r = await cli(command, ...argv);
      assert.equal(r.code, 2, `${command} ${argv.join(" ")}`);
      assert.match(r.err, re, `${command} ${argv.join(" ")}`);
    }
  }
});

test("demo and lab: a missing base model is named with how to build it; nothing is written", async () => {
  for (const command of ["demo", "lab"]) {
    const out = join(dir, `${command}-out`);
    const r = await cli(command, "--base", join(dir, "nowhere"), "--out", out);
    assert.equal(r.code, 1);
    assert.match(r.err, /the shapes-world base model is missing at .*nowhere: run 'atelier shapes build-base'/);
    assert.ok(!existsSync(out), `${command} wrote nothing`);
  }
});

test("lab --stage2: flags of the other lab refused, a missing upscaler named; nothing is written", async () => {
  const out = join(dir, "lab-stage2");
  for (const [argv, re] of [
    [["--stage2", "--only", "db-prior"], /--only is not a flag of lab --stage2/],
    [["--upscaler", "x"], /--upscaler goes with --stage2/],
    [["--stage2-steps", "5"], /--stage2-steps goes with --stage2/],
    [["--stage2", "--stage2-steps", "0"], /--stage2-steps must be an integer >= 1/],
  ] as [string[], RegExp][]) {
    const r = await cli("lab", ...argv, "--out", out);
    assert.equal(r.code, 2, argv.join(" "));
    assert.match(r.err, re, argv.join(" "));
  }
  const r = await cli("lab", "--stage2", "--upscaler", join(dir, "no-upscaler"), "--out", out);
  assert.equal(r.code, 1);
  assert.match(r.err, /lab --stage2: no upscaler folder at .*no-upscaler \(atelier shapes build-upscaler\)/);
  assert.ok(!existsSync(out), "nothing written");
});

test("lab --only: an unknown run is named with the list of runs", async () => {
  const out = join(dir, "lab-only");
  const r = await cli("lab", "--only", "db-prior,db-typo", "--out", out);
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    /--only: no run named 'db-typo'; the runs are db-prior, db-prior-generated, db-no-prior, .*one-concept-captioned/,
  );
  assert.ok(!existsSync(out) || readdirSync(out).length === 0, "no run started");
});

test("lab --checkpoints: a malformed list or a step past the runs is refused before any run", async () => {
  for (const bad of ["100,x", "0", "1.5"]) {
    const r = await cli("lab", "--checkpoints", bad, "--out", join(dir, "lab-ckpt"));
    assert.equal(r.code, 2, bad);
    assert.match(r.err, /--checkpoints must be steps \(integers >= 1\) separated by commas/, bad);
  }
  const out = join(dir, "lab-ckpt-late");
  const r = await cli("lab", "--steps", "10", "--checkpoints", "5,20", "--out", out);
  assert.equal(r.code, 1);
  assert.match(r.err, /--checkpoints: step 20 is not a step of the 10-step runs \(1 to 10\)/);
  assert.ok(!existsSync(out), "nothing written");
});

test("shapes: bad subcommands and flags are refused", async () => {
  const cases: [string[], number, RegExp][] = [
    [["shapes", "paint"], 2, /unknown subcommand 'paint'/],
    [["shapes"], 2, /usage:/],
    [["shapes", "world"], 2, /an output folder/],
    [["shapes", "world", join(dir, "w"), "--n", "0"], 2, /--n must be an integer >= 1/],
    [["shapes", "build-base", "--samples", "0"], 2, /--samples must be an integer >= 1/],
    [["shapes", "build-base", "--vae-from", join(dir, "no-model")], 2, /--vae-from .*no-model: no such model/],
    [["shapes", "build-base", "stray"], 2, /no arguments/],
  ];
  for (const [argv, code, re] of cases) {
    const r = await cli(...argv);
    assert.equal(r.code, code, argv.join(" "));
    assert.match(`${r.err}\n${r.out}`, re, argv.join(" "));
  }
});

test("shapes world writes N images with captions and scenes.json", async () => {
  const out = join(dir, "world");
  const r = await cli("shapes", "world", out, "--n", "3", "--seed", "2");
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(readdirSync(out).sort(), [
    "00000.png",
    "00000.txt",
    "00001.png",
    "00001.txt",
    "00002.png",
    "00002.txt",
    "scenes.json",
  ]);
});
