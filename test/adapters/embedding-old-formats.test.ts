// The older embedding layouts, read as AUTOMATIC1111's
// modules/textual_inversion/textual_inversion.py `create_embedding_from_data`
// does (files written here by Atelier's own .pt writer in those layouts):
// the LDM textual_inversion repo's {string_to_token, string_to_param:
// nn.ParameterDict} without name/step, kohya's old {'emb_params': …} .pt, a
// bare tensor saved with torch.save, and diffusers' learned_embeds.bin
// {token: [H]}. Broken ones are refused naming the file.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { loadEmbeddingFile } from "../../src/adapters/embedding-file.js";
import { tensor } from "../../src/engine/index.js";
import { PtTensor, PyOrderedDict, PyParameterDict, savePt } from "../../src/formats/pt-write.js";
import { checkLeaks, tempDir } from "../helpers.js";

checkLeaks();

const dir = tempDir("atelier-old-emb-");
const values = [0.5, -1.25, 2, 0.125, 3, -0.75];

/**
 * An nn.ParameterDict's __dict__ as torch pickles it (training, _parameters,
 * _buffers, _modules, and since torch 1.12 _keys); Debian's python3-torch
 * torch.load reads this layout back as a ParameterDict (checked by hand).
 */
const parameterDict = (params: Map<string, PtTensor>) =>
  new PyParameterDict(
    new Map<string, PyOrderedDict | Map<string, null> | boolean>([
      ["_keys", new Map([...params.keys()].map((k) => [k, null]))],
      ["training", true],
      ["_parameters", new PyOrderedDict(params)],
      ["_buffers", new PyOrderedDict(new Map())],
      ["_modules", new PyOrderedDict(new Map())],
    ]),
  );

function read(path: string) {
  const e = loadEmbeddingFile(path);
  const out = { shape: e.vectors.shape, values: e.vectors.toArray(), layout: e.layout, step: e.step, name: e.name };
  e.vectors.dispose();
  return out;
}

test("LDM textual_inversion .pt: string_to_param as a ParameterDict, no name or step", () => {
  const path = join(dir, "ldm-cat.pt");
  const t = tensor(values, { shape: [2, 3] });
  const token = tensor([265], { shape: [], dtype: "int64" });
  savePt(path, {
    string_to_token: new Map([["*", token]]),
    string_to_param: parameterDict(new Map([["*", new PtTensor(t, true)]])),
  });
  t.dispose();
  token.dispose();
  assert.deepEqual(read(path), { shape: [2, 3], values, layout: "ldm", step: null, name: "ldm-cat" });
});

test("old emb_params .pt, a bare tensor, and diffusers learned_embeds.bin ({token: [H]})", () => {
  const t = tensor(values, { shape: [2, 3] });
  const row = tensor(values.slice(0, 3), { shape: [3] });
  savePt(join(dir, "old.pt"), { emb_params: t });
  savePt(join(dir, "bare.pt"), t);
  savePt(join(dir, "bare-row.pt"), row);
  savePt(join(dir, "learned_embeds.bin"), new Map([["<cat-toy>", row]]));
  t.dispose();
  row.dispose();
  assert.deepEqual(read(join(dir, "old.pt")), { shape: [2, 3], values, layout: "emb_params", step: null, name: "old" });
  assert.deepEqual(read(join(dir, "bare.pt")), { shape: [2, 3], values, layout: "tensor", step: null, name: "bare" });
  assert.deepEqual(read(join(dir, "bare-row.pt")).shape, [1, 3]);
  assert.deepEqual(read(join(dir, "learned_embeds.bin")), {
    shape: [1, 3],
    values: values.slice(0, 3),
    layout: "diffusers",
    step: null,
    name: "learned_embeds",
  });
});

test("broken old files are refused naming the file", () => {
  const a = tensor(values, { shape: [2, 3] });
  const ints = tensor([1, 2, 3], { shape: [3], dtype: "int64" });
  const two = join(dir, "two-terms.pt");
  savePt(two, {
    string_to_param: parameterDict(
      new Map([
        ["*", new PtTensor(a)],
        ["@", new PtTensor(a)],
      ]),
    ),
  });
  const hollow = join(dir, "hollow.pt");
  savePt(hollow, { string_to_param: new PyParameterDict(new Map([["training", false]])) });
  const intBare = join(dir, "ints.pt");
  savePt(intBare, ints);
  const cube = join(dir, "cube.pt");
  const c = tensor([...values, ...values], { shape: [2, 2, 3] });
  savePt(cube, c);
  a.dispose();
  ints.dispose();
  c.dispose();
  assert.throws(
    () => loadEmbeddingFile(two),
    /two-terms\.pt: string_to_param must hold exactly one tensor \(the file has 2 terms\)/,
  );
  assert.throws(() => loadEmbeddingFile(hollow), /hollow\.pt: string_to_param is a ParameterDict without _parameters/);
  assert.throws(() => loadEmbeddingFile(intBare), /ints\.pt: the file's tensor is int64, not floating point/);
  assert.throws(
    () => loadEmbeddingFile(cube),
    /cube\.pt: the file's tensor has shape \[2,2,3\], expected \[vectors, width\]/,
  );
});
