// Forms for the studio's other jobs: class images for prior preservation
// (POST /api/class-images → datasets/NAME, Train page), batch generation
// (POST /api/generate/batch, one job per prompt line, Generate page) and an
// evaluation (POST /api/eval → outputs/eval/NAME/report.html, Lab page).
// The page holds no logic: one API call per action, then the job is followed.
import { $, api } from "./api.js";
import { clearErrors, showError } from "./forms.js";

async function follow(ids, status, done) {
  for (;;) {
    const jobs = await Promise.all(ids.map((id) => api("GET", `/api/jobs/${id}`)));
    const bad = jobs.find((j) => j.status === "failed" || j.status === "cancelled");
    if (bad) {
      status.textContent = `job ${bad.id} ${bad.status}: ${bad.error ?? ""}`;
      return;
    }
    if (jobs.every((j) => j.status === "done")) {
      status.textContent = done(jobs);
      return;
    }
    const j = jobs.find((x) => x.status !== "done");
    status.textContent = `job ${j.id}: ${j.status} ${j.step}/${j.total}…`;
    await new Promise((r) => setTimeout(r, 500));
  }
}

function options(select, names, blank) {
  if (!select) return;
  const opts = names.map((n) => new Option(n, n));
  select.replaceChildren(...(blank === undefined ? [] : [new Option(blank, "")]), ...opts);
}

/** Fills the forms' model and LoRA lists. */
export async function loadStudioJobs() {
  const [models, ws] = await Promise.all([api("GET", "/api/models"), api("GET", "/api/workspace")]);
  const names = models.models.map((m) => m.name);
  for (const s of ["#class-model", "#batch-model", "#eval-model"]) options($(s), names);
  options($("#eval-base"), names, "(built-in shapes base)");
  options(
    $("#eval-lora"),
    ws.lora.map((f) => f.name.replace(/\.safetensors$/, "")).filter((n) => !/\.pt$/.test(n)),
    "(none)",
  );
}

function onSubmit(id, send) {
  const form = $(id);
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = form.querySelector(".job-status");
    clearErrors(form);
    status.textContent = "";
    try {
      await send(form, status);
    } catch (e) {
      if (!showError(form, e)) status.textContent = e.message;
    }
  });
}

const optional = (body, key, value) => {
  if (value !== "" && value !== undefined) body[key] = value;
};

onSubmit("#class-images-form", async (f, status) => {
  const body = { name: f.name.value, model: f.model.value, prompt: f.prompt.value, count: Number(f.count.value) };
  optional(body, "negative", f.negative.value);
  optional(body, "steps", f.steps.value && Number(f.steps.value));
  const job = await api("POST", "/api/class-images", body);
  await follow([job.id], status, ([j]) => `wrote ${j.result.images.length} pictures to ${j.result.output}`);
});

onSubmit("#batch-form", async (f, status) => {
  const prompts = f.prompts.value.split("\n").filter((p) => p.trim() !== "");
  const body = { model: f.model.value, prompts, steps: Number(f.steps.value) };
  optional(body, "seed", f.seed.value && Number(f.seed.value));
  const r = await api("POST", "/api/generate/batch", body);
  await follow(
    r.jobs.map((j) => j.id),
    status,
    (jobs) => `${jobs.length} jobs done: ${jobs.flatMap((j) => j.result.images).join(", ")}`,
  );
});

onSubmit("#eval-form", async (f, status) => {
  const body = { name: f.name.value, model: f.model.value, samples: Number(f.samples.value) };
  optional(body, "lora", f.lora.value);
  optional(body, "base", f.base.value);
  optional(body, "subject", f.subject.value);
  optional(body, "steps", f.steps.value && Number(f.steps.value));
  const job = await api("POST", "/api/eval", body);
  await follow([job.id], status, ([j]) => {
    window.dispatchEvent(new CustomEvent("atelier:report", { detail: { path: j.result.output } }));
    return `wrote ${j.result.output}`;
  });
});
