// The Models page's merge forms: LoRAs of models/Lora baked into a checkpoint
// (POST /api/merge/lora) and A1111's checkpoint merger (POST
// /api/merge/checkpoints). Each queues a job; its result lands in
// models/Stable-diffusion. The page holds no logic: one API call per action.
import { $, api } from "./api.js";
import { clearErrors, formField, showError } from "./forms.js";

async function follow(job, status) {
  for (;;) {
    const j = await api("GET", `/api/jobs/${job.id}`);
    if (j.status === "done") return (status.textContent = `wrote ${j.result.output}`);
    if (j.status === "failed" || j.status === "cancelled")
      return (status.textContent = `${j.status}: ${j.error ?? ""}`);
    status.textContent = `merging (job ${job.id}, ${j.status})…`;
    await new Promise((r) => setTimeout(r, 500));
  }
}

function options(select, files) {
  select.replaceChildren(...files.map((f) => new Option(f, f)));
}

export async function loadMerge() {
  const ws = await api("GET", "/api/workspace");
  const checkpoints = ws.checkpoints.map((f) => f.path).filter((p) => /\.(safetensors|ckpt)$/i.test(p));
  for (const s of ["#merge-a", "#merge-b", "#merge-c"]) options($(s), checkpoints);
  // LoRAs also merge into the workspace's own models (made on this page), named as such
  const { models } = await api("GET", "/api/models");
  options($("#merge-lora-checkpoint"), [...models.map((m) => m.dir.split("/").pop()), ...checkpoints]);
  options(
    $("#merge-lora-name"),
    ws.lora.map((f) => f.name.replace(/\.safetensors$/, "")),
  );
}

// The LoRA form's one LoRA is the request's loras[0]
const LORA_FIELDS = { "loras[0].name": "lora", "loras[0].weight": "weight", loras: "lora" };

async function submit(form, path, body) {
  const status = form.querySelector(".merge-status");
  clearErrors(form);
  status.textContent = "";
  try {
    await follow(await api("POST", path, body), status);
    await loadMerge();
  } catch (e) {
    if (!showError(form, e, formField(form, LORA_FIELDS))) status.textContent = e.message;
  }
}

$("#merge-lora-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = ev.target;
  submit(f, "/api/merge/lora", {
    name: f.name.value,
    checkpoint: f.checkpoint.value,
    loras: [{ name: f.lora.value, weight: Number(f.weight.value) }],
  });
});
$("#merge-ckpt-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = { name: f.name.value, a: f.a.value, mode: f.mode.value, multiplier: Number(f.multiplier.value) };
  if (f.mode.value !== "none") body.b = f.b.value;
  if (f.mode.value === "add_difference") body.c = f.c.value;
  submit(f, "/api/merge/checkpoints", body);
});
