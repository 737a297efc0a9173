// lora.algo and the LyCORIS fields of the lora section: each algorithm
// resolves for method lora and Dreambooth with use_lora, kohya network_args
// spellings map to the fields, and bad input is a ConfigError naming the field.
import assert from "node:assert/strict";
import { test } from "node:test";
import { networkArgNotes } from "../../src/train/methods/lora-network-args.js";
import { fails, load, minimal } from "./config-world.js";

test("every algo resolves for method lora and for Dreambooth with use_lora", () => {
  for (const algo of ["lora", "locon", "loha", "lokr", "dora", "ia3", "full"]) {
    const conv = ["locon", "loha", "lokr", "dora"].includes(algo) ? { conv_rank: 2 } : {};
    assert.equal(load(minimal({ method: "lora", lora: { algo, ...conv } })).lora.algo, algo);
    const d = load(minimal({ use_lora: true, lora: { algo } }));
    assert.equal(d.use_lora, true);
    assert.equal(d.lora.algo, algo);
  }
});

test("network_args in kohya's spelling set the lora fields, with a note naming each", () => {
  const args = [
    "algo=lokr",
    "conv_dim=8",
    "conv_alpha=4",
    "factor=8",
    "decompose_both=True",
    "use_cp=true",
    "rank_dropout=0.1",
  ];
  const c = load(minimal({ method: "lora", lora: { network_args: args } }));
  assert.equal(c.lora.algo, "lokr");
  assert.equal(c.lora.conv_rank, 8);
  assert.equal(c.lora.conv_alpha, 4);
  assert.equal(c.lora.factor, 8);
  assert.equal(c.lora.decompose_both, true);
  assert.equal(c.lora.use_tucker, true);
  assert.equal(c.lora.rank_dropout, 0.1);
  assert.deepEqual(networkArgNotes(["conv_dim=8", "dora_wd=True"]), [
    "network_args conv_dim=8 → lora.conv_rank = 8",
    "network_args dora_wd=True → lora.weight_decompose = true",
  ]);
});

test("lora.train_norm, also as network_args train_norm=True (LyCORIS kohya.py), defaults to false", () => {
  assert.equal(load(minimal({ method: "lora", lora: {} })).lora.train_norm, false);
  assert.equal(load(minimal({ method: "lora", lora: { algo: "loha", train_norm: true } })).lora.train_norm, true);
  const c = load(minimal({ method: "lora", lora: { network_args: ["algo=locon", "train_norm=True"] } }));
  assert.equal(c.lora.train_norm, true);
  assert.deepEqual(networkArgNotes(["train_norm=True"]), ["network_args train_norm=True → lora.train_norm = true"]);
});

test("bad input names the field", () => {
  const lora = (l: Record<string, unknown>) => () => load(minimal({ method: "lora", lora: l }));
  fails(lora({ algo: "oft" }), /lora\.algo/, "lora.algo");
  fails(lora({ network_args: ["algo=oft"] }), /unknown algorithm 'oft'/, "lora.algo");
  fails(lora({ algo: "ia3", conv_rank: 4 }), /lora\.conv_rank: algo ia3 has no convolution setting/, "lora.conv_rank");
  fails(lora({ algo: "full", conv_rank: 4 }), /algo full has no convolution setting/, "lora.conv_rank");
  fails(lora({ algo: "loha", factor: 4 }), /only LoKr has a factor/, "lora.factor");
  fails(lora({ algo: "full", weight_decompose: true }), /DoRA decomposes/, "lora.weight_decompose");
  fails(lora({ algo: "loha", dropout: 0.1 }), /dropout for LoRA\/LoCon only/, "lora.dropout");
  fails(lora({ network_args: ["conv_dim"] }), /'conv_dim' is not KEY=VALUE/, "lora.network_args");
  fails(lora({ network_args: ["nope=1"] }), /unknown argument 'nope'/, "lora.network_args");
  fails(lora({ network_args: ["use_scalar=True"] }), /use_scalar is not supported/, "lora.network_args");
  fails(
    lora({ train_norm: true, network_args: ["train_norm=False"] }),
    /contradicts lora\.train_norm/,
    "lora.train_norm",
  );
  fails(lora({ network_args: ["conv_dim=x"] }), /not a valid value for lora\.conv_rank/, "lora.network_args");
  fails(lora({ conv_rank: 4, network_args: ["conv_dim=8"] }), /contradicts lora\.conv_rank = 4/, "lora.conv_rank");
});
