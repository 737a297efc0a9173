// The studio's pages: plain ES modules, no build step, nothing fetched from
// outside the studio. Every action is one call of the JSON API
// (/api/openapi.json); the pages hold no logic of their own.
import { $, $$, api, fileUrl, token } from "./api.js";
import { clearErrors, formField, showError } from "./forms.js";
import { loadMerge } from "./merge.js";
import { loadStudioJobs } from "./studio-jobs.js";

const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};

function waitJob(id, onUpdate) {
  return new Promise((resolve, reject) => {
    const poll = async () => {
      try {
        const j = await api("GET", `/api/jobs/${id}`);
        onUpdate?.(j);
        if (["done", "failed", "cancelled"].includes(j.status)) resolve(j);
        else setTimeout(poll, 500);
      } catch (e) {
        reject(e);
      }
    };
    poll();
  });
}

// ---- pages -----------------------------------------------------------------------------------
const pages = ["models", "train", "jobs", "generate", "library", "lab"];
function showPage() {
  const name = location.hash.replace(/^#/, "").split("&")[0];
  const page = pages.includes(name) ? name : "models";
  for (const p of pages) $(`#page-${p}`).hidden = p !== page;
  for (const a of $$("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  loaders[page]?.();
}
window.addEventListener("hashchange", showPage);

let workspace = null;
async function loadWorkspace() {
  workspace = await api("GET", "/api/workspace");
  for (const s of ["#model-scheduler", "#gen-sampler"]) {
    const sel = $(s);
    if (sel.options.length === 0)
      for (const n of workspace.samplers) sel.append(el("option", { value: n, textContent: n }));
  }
  $("#status").textContent = `workspace ${workspace.root}`;
  return workspace;
}

async function loadModelsInto(select) {
  const { models } = await api("GET", "/api/models");
  const keep = select.value;
  select.replaceChildren(
    ...models.map((m) => el("option", { value: m.name, textContent: `${m.name} (${m.scheduler})` })),
  );
  if (keep && models.some((m) => m.name === keep)) select.value = keep;
  return models;
}

// Models
async function loadModels() {
  await loadWorkspace();
  const sources = await api("GET", "/api/sources");
  const src = $("#model-source");
  const keep = src.value;
  src.replaceChildren(...sources.map((s) => el("option", { value: s.source, textContent: s.label })));
  if (keep) src.value = keep;
  const { models, problems } = await api("GET", "/api/models");
  const body = $("#models-table tbody");
  body.replaceChildren(
    ...models.map((m) => {
      const tr = el(
        "tr",
        { className: "clickable" },
        el("td", { textContent: m.name }),
        el("td", { textContent: `${m.architecture.version} ${m.architecture.prediction_type}` }),
        el("td", { textContent: m.scheduler }),
        el("td", { textContent: m.created.slice(0, 19).replace("T", " ") }),
        el("td", { textContent: m.source.path }),
      );
      tr.addEventListener("click", async () => {
        $("#model-detail").textContent = JSON.stringify(await api("GET", `/api/models/${m.name}`), null, 2);
      });
      return tr;
    }),
  );
  if (problems.length) $("#model-detail").textContent = problems.join("\n");
}

$("#create-model").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const status = $("#create-model-status");
  try {
    const job = await api("POST", "/api/models", {
      name: form.name.value,
      source: form.source.value,
      scheduler: form.scheduler.value,
      overwrite: form.overwrite.checked,
    });
    status.textContent = `creating ${form.name.value} (job ${job.id})…`;
    const done = await waitJob(job.id);
    status.textContent = done.status === "done" ? `created ${form.name.value}` : `failed: ${done.error}`;
    await Promise.all([loadModels(), loadMerge()]);
  } catch (e) {
    showError(form, e, formField(form));
  }
});

// Train: the concepts editor
let datasets = [];
async function loadDatasets() {
  datasets = await api("GET", "/api/datasets");
  for (const sel of $$(".c-dataset")) {
    const keep = sel.value;
    sel.replaceChildren(
      el("option", { value: "", textContent: "(pick or make one)" }),
      ...datasets.map((d) => el("option", { value: d.name, textContent: `${d.name} (${d.images})` })),
    );
    if (keep) sel.value = keep;
  }
}

async function showConcept(div) {
  const name = $(".c-dataset", div).value;
  const box = $(".c-images", div);
  if (!name) return box.replaceChildren();
  const d = await api("GET", `/api/datasets/${encodeURIComponent(name)}`);
  box.replaceChildren(
    ...d.images.map((img) => {
      const caption = el("input", {
        value: img.caption ?? "",
        placeholder: "caption (default: the instance prompt)",
        className: "caption",
      });
      caption.addEventListener("change", () =>
        api("PUT", `/api/datasets/${encodeURIComponent(name)}/captions/${encodeURIComponent(img.file)}`, {
          text: caption.value,
        }),
      );
      return el("figure", {}, el("img", { src: fileUrl(img.path), alt: img.file }), caption);
    }),
  );
}

function addConcept() {
  const div = $("#concept-template").content.firstElementChild.cloneNode(true);
  $("#concepts").append(div);
  $(".c-remove", div).addEventListener("click", () => div.remove());
  $(".c-dataset", div).addEventListener("change", () => showConcept(div));
  $(".c-upload", div).addEventListener("change", async (ev) => {
    const err = $(".c-error", div);
    err.textContent = "";
    let name = $(".c-dataset", div).value || $(".c-new", div).value.trim();
    try {
      if (!name) throw new Error("name the new dataset first");
      if (!datasets.some((d) => d.name === name)) await api("POST", "/api/datasets", { name });
      for (const file of ev.target.files) {
        await api(
          "PUT",
          `/api/datasets/${encodeURIComponent(name)}/images/${encodeURIComponent(file.name)}`,
          undefined,
          file,
        );
      }
      await loadDatasets();
      $(".c-dataset", div).value = name;
      await showConcept(div);
    } catch (e) {
      err.textContent = e.message;
    }
    name = null;
  });
  loadDatasets();
  return div;
}
$("#add-concept").addEventListener("click", addConcept);

function trainRequest(form) {
  const v = (n) => form.elements.namedItem(n);
  const num = (n) => {
    const s = v(n).value.trim();
    return s !== "" && Number.isFinite(Number(s)) ? Number(s) : s;
  };
  const method = v("method").value;
  const lora = method === "lora" || (method === "dreambooth" && v("use_lora").checked);
  const formats = { textual_inversion: ["embedding_pt"], hypernetwork: ["hypernetwork_pt"] }[method];
  const config = {
    model: v("model").value,
    method,
    epochs: num("epochs"),
    max_steps: num("max_steps"),
    batch_size: num("batch_size"),
    resolution: num("resolution"),
    learning_rate: num("learning_rate"),
    lr_scheduler: v("lr_scheduler").value,
    lr_warmup_steps: num("lr_warmup_steps"),
    train_text_encoder: v("train_text_encoder").checked,
    seed: num("seed"),
    save: {
      every_n_steps: num("save.every_n_steps"),
      every_n_epochs: num("save.every_n_epochs"),
      keep_last: num("save.keep_last"),
      ...(lora ? { formats: ["lora"] } : formats ? { formats } : {}),
    },
    sample: {
      every_n_steps: num("sample.every_n_steps"),
      steps: num("sample.steps"),
      prompts: v("sample.prompts")
        .value.split("\n")
        .map((s) => s.trim())
        .filter(Boolean),
    },
    concepts: $$("#concepts .concept").map((div) => {
      const ds = $(".c-dataset", div).value || $(".c-new", div).value.trim();
      const classPrompt = $(".c-class", div).value.trim();
      const count = Number($(".c-count", div).value || 0);
      return {
        instance_data_dir: ds ? `datasets/${ds}` : "",
        instance_prompt: $(".c-instance", div).value,
        ...(classPrompt ? { class_prompt: classPrompt } : {}),
        ...(count > 0 ? { num_class_images: count, class_data_dir: `datasets/${ds}-class` } : {}),
      };
    }),
  };
  if (method === "dreambooth") config.use_lora = v("use_lora").checked;
  if (lora) {
    config.lora = { algo: v("lora.algo").value, rank: num("lora.rank") };
    if (num("lora.conv_rank") !== 0) config.lora.conv_rank = num("lora.conv_rank");
  }
  if (method === "textual_inversion") {
    config.textual_inversion = {
      token: v("textual_inversion.token").value.trim(),
      init_text: v("textual_inversion.init_text").value,
      vectors: num("textual_inversion.vectors"),
    };
  }
  if (method === "hypernetwork") config.hypernetwork = { name: v("hypernetwork.name").value.trim() };
  return { name: v("name").value, config };
}

const CONCEPT_INPUTS = {
  instance_data_dir: ".c-dataset",
  instance_prompt: ".c-instance",
  class_prompt: ".c-class",
  num_class_images: ".c-count",
  class_data_dir: ".c-count",
};
const trainField = (form) => (field) => {
  const m = /^body\.config\.concepts\[(\d+)\]\.(\w+)/.exec(field);
  if (m) {
    const div = $$("#concepts .concept")[Number(m[1])];
    return div ? $(CONCEPT_INPUTS[m[2]] ?? ".c-instance", div) : $("#add-concept");
  }
  if (field === "body.config.concepts") return $("#add-concept");
  return formField(form)(field.replace(/^body\.config\./, ""));
};

async function checkTrain(form) {
  clearErrors(form);
  try {
    const r = await api("POST", "/api/train/check", trainRequest(form));
    $("#resolved-config").textContent = r.toml;
    const a = $("#download-toml");
    a.href = URL.createObjectURL(new Blob([r.toml], { type: "application/toml" }));
    a.download = `${form.elements.namedItem("name").value}.toml`;
    a.hidden = false;
    return true;
  } catch (e) {
    $("#resolved-config").textContent = "";
    showError(form, e, trainField(form));
    return false;
  }
}

async function loadTrain() {
  await loadModelsInto($("#train-model"));
  if ($$("#concepts .concept").length === 0) addConcept();
  else loadDatasets();
}
$("#check-config").addEventListener("click", () => checkTrain($("#train-form")));
$("#train-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  if (!(await checkTrain(form))) return;
  try {
    const job = await api("POST", "/api/train", trainRequest(form));
    location.hash = `#jobs&job=${job.id}`;
  } catch (e) {
    showError(form, e, trainField(form));
  }
});

// Jobs
let openJobId = null;
let stream = null;
let jobsTimer = null;

const fmtEta = (s) =>
  s === null || s === undefined ? "" : s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;

async function loadJobs() {
  clearTimeout(jobsTimer);
  const jobs = await api("GET", "/api/jobs");
  $("#jobs-table tbody").replaceChildren(
    ...jobs.map((j) => {
      const tr = el(
        "tr",
        { className: `clickable status-${j.status}` },
        el("td", { textContent: j.id }),
        el("td", { textContent: j.kind }),
        el("td", { textContent: j.name }),
        el("td", { textContent: j.status, className: "job-status" }),
        el("td", { textContent: j.total ? `${j.step}/${j.total}` : "" }),
        el("td", { textContent: j.error ?? "" }),
      );
      tr.addEventListener("click", () => openJob(j.id));
      return tr;
    }),
  );
  const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("job"));
  if (wanted && wanted !== openJobId) openJob(wanted);
  else if (!openJobId && jobs.length) openJob(jobs[0].id);
  if (!$("#page-jobs").hidden) jobsTimer = setTimeout(loadJobs, 2000);
}

function drawLoss(losses) {
  const svg = $("#loss-chart");
  if (losses.length === 0) return svg.replaceChildren();
  const ys = losses.map((l) => l.loss);
  const lo = Math.min(...ys);
  const hi = Math.max(...ys);
  const maxStep = Math.max(losses.at(-1).total ?? 1, ...losses.map((l) => l.step));
  const pts = losses
    .map((l) => `${(l.step / maxStep) * 590 + 5},${195 - ((l.loss - lo) / (hi - lo || 1)) * 185}`)
    .join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts);
  line.setAttribute("class", "loss-line");
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "8");
  label.setAttribute("y", "14");
  label.textContent = `loss ${ys.at(-1).toFixed(4)} (min ${lo.toFixed(4)}, max ${hi.toFixed(4)})`;
  svg.replaceChildren(line, label);
}

function openJob(id) {
  openJobId = id;
  stream?.close();
  const losses = [];
  const samples = new Set();
  $("#job-detail").hidden = false;
  $("#job-samples").replaceChildren();
  $("#job-log").textContent = "";
  drawLoss(losses);
  const showJob = (j) => {
    $("#job-title").textContent = `job ${j.id}: ${j.kind} ${j.name} — ${j.status}`;
    $("#job-title").dataset.status = j.status;
    const pct = j.total ? (100 * j.step) / j.total : j.status === "done" ? 100 : 0;
    $("#job-bar").style.width = `${pct}%`;
    $("#job-progress").textContent = j.total
      ? `step ${j.step}/${j.total}${j.eta_seconds ? `, ETA ${fmtEta(j.eta_seconds)}` : ""}`
      : j.status;
    $("#job-pause").disabled = !(j.kind === "train" && ["running", "queued"].includes(j.status));
    $("#job-resume").disabled = !(j.status === "paused" || (j.kind === "train" && j.status === "failed"));
    $("#job-cancel").disabled = !["queued", "running", "paused"].includes(j.status);
    if (j.error) $("#job-log").textContent += `${j.error}\n`;
  };
  const url = `/api/jobs/${id}/events${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  stream = new EventSource(url);
  stream.addEventListener("job", (e) => showJob(JSON.parse(e.data)));
  stream.addEventListener("start", (e) => {
    const d = JSON.parse(e.data);
    // a resumed run redoes the steps after its state
    while (losses.length && losses.at(-1).step > d.step) losses.pop();
    drawLoss(losses);
  });
  stream.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    const at = losses.findIndex((l) => l.step >= d.step);
    if (at < 0) losses.push(d);
    else losses.splice(at, losses[at].step === d.step ? 1 : 0, d);
    drawLoss(losses);
    $("#job-bar").style.width = `${(100 * d.step) / d.total}%`;
    $("#job-progress").textContent =
      `step ${d.step}/${d.total}, loss ${d.loss.toFixed(4)}${d.eta_seconds !== null ? `, ETA ${fmtEta(d.eta_seconds)}` : ""}`;
  });
  stream.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    $("#job-bar").style.width = `${(100 * d.step) / d.total}%`;
    $("#job-progress").textContent = `step ${d.step}/${d.total}`;
  });
  stream.addEventListener("sample", (e) => {
    const d = JSON.parse(e.data);
    if (samples.has(d.path)) return;
    samples.add(d.path);
    $("#job-samples").append(
      el(
        "figure",
        {},
        el("img", { src: fileUrl(d.path), alt: `step ${d.step}` }),
        el("figcaption", { textContent: `step ${d.step}` }),
      ),
    );
  });
  stream.addEventListener("log", (e) => {
    const d = JSON.parse(e.data);
    const log = $("#job-log");
    log.textContent += `${d.level === "info" ? "" : `${d.level}: `}${d.message}\n`;
    log.scrollTop = log.scrollHeight;
  });
}
for (const action of ["pause", "resume", "cancel"]) {
  $(`#job-${action}`).addEventListener("click", async () => {
    if (!openJobId) return;
    try {
      await api("POST", `/api/jobs/${openJobId}/${action}`);
      if (action === "resume") openJob(openJobId);
    } catch (e) {
      $("#job-log").textContent += `${e.message}\n`;
    }
    loadJobs();
  });
}

// Generate
async function loadGallery() {
  const outputs = await api("GET", "/api/outputs");
  $("#gallery").replaceChildren(
    ...outputs.map((o) => {
      const img = el("img", { src: fileUrl(o.path), alt: o.name, title: o.parameters ?? "" });
      img.addEventListener("click", () => {
        $("#png-info").textContent = `${o.path}\n\n${o.parameters ?? "(no parameters)"}`;
      });
      return el("figure", {}, img);
    }),
  );
}
async function loadGenerate() {
  await loadWorkspace();
  const models = await loadModelsInto($("#gen-model"));
  // the sampler follows the model's scheduler (chosen when it was created) until changed here
  const follow = () => {
    const m = models.find((x) => x.name === $("#gen-model").value);
    if (m) $("#gen-sampler").value = m.scheduler;
  };
  $("#gen-model").onchange = follow;
  follow();
  const picks = [
    ["#gen-lora", workspace.lora],
    ["#gen-hypernet", workspace.hypernetworks],
    ["#gen-embedding", workspace.embeddings],
  ];
  for (const [sel, files] of picks) {
    $(sel).replaceChildren(
      el("option", { value: "", textContent: "(pick to add to the prompt)" }),
      ...files.map((f) => {
        const n = f.name.replace(/\.(safetensors|pt|bin)$/, "");
        return el("option", { value: n, textContent: n });
      }),
    );
  }
  $("#gen-upscaler").replaceChildren(
    el("option", { value: "", textContent: "(none)" }),
    ...workspace.upscalers.map((n) => el("option", { value: n, textContent: n })),
  );
  await loadGallery();
}
// LoRAs and hypernetworks are tags; an embedding is its file name as a word (A1111)
const pickTag = {
  "gen-lora": (n) => `<lora:${n}:1>`,
  "gen-hypernet": (n) => `<hypernet:${n}:1>`,
  "gen-embedding": (n) => n,
};
for (const sel of $$(".gen-pick")) {
  sel.addEventListener("change", (ev) => {
    if (!ev.target.value) return;
    const t = pickTag[ev.target.id](ev.target.value);
    const p = $("#generate-form").prompt;
    p.value = `${p.value.trim()} ${t}`.trim();
    ev.target.value = "";
  });
}
$("#generate-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  clearErrors(form);
  const n = (name) => Number(form.elements.namedItem(name).value);
  const status = $("#gen-status");
  try {
    const job = await api("POST", "/api/generate", {
      model: form.model.value,
      prompt: form.prompt.value,
      negative: form.negative.value,
      sampler: form.sampler.value,
      steps: n("steps"),
      cfg: n("cfg"),
      seed: n("seed"),
      width: n("width"),
      height: n("height"),
      // a second stage ×4 when an upscaler is picked
      ...(form.upscaler.value ? { upscaler: form.upscaler.value } : {}),
      ...(form.upscaler.value && form.noise_level.value !== "" ? { noise_level: n("noise_level") } : {}),
    });
    status.textContent = `generating (job ${job.id})…`;
    const done = await waitJob(job.id, (j) => {
      if (j.total) status.textContent = `generating: step ${j.step}/${j.total}`;
    });
    status.textContent = done.status === "done" ? `wrote ${done.result.images.join(", ")}` : `failed: ${done.error}`;
    await loadGallery();
    if (done.status === "done") $("#gallery img")?.click();
  } catch (e) {
    showError(form, e, formField(form));
  }
});

// Library, Lab
async function loadLibrary() {
  const lib = await api("GET", "/api/library");
  const section = (title, items) =>
    el(
      "div",
      {},
      el("h3", { textContent: `${title} (${items.length})` }),
      ...items.map((f) => {
        const meta = f.metadata ?? {};
        const about = [
          "ss_network_module",
          "ss_network_dim",
          "ss_network_alpha",
          "ss_base_model_version",
          "ss_steps",
          "ss_training_comment",
          "atelier_method",
          "atelier_step",
        ]
          .filter((k) => meta[k] !== undefined)
          .map((k) => `${k}: ${meta[k]}`);
        return el(
          "details",
          {},
          el("summary", {
            textContent: `${f.path} — ${(f.size / 1024).toFixed(0)} KiB${f.problem ? ` — ${f.problem}` : ""}`,
          }),
          el("pre", { textContent: [...about, "", JSON.stringify(meta, null, 2)].join("\n") }),
        );
      }),
    );
  $("#library").replaceChildren(
    section("LoRA", lib.lora),
    section("Embeddings", lib.embeddings),
    section("Hypernetworks", lib.hypernetworks),
  );
}
/** The Lab page's list; shows the report at `select` (a workspace path), else the first. */
async function loadLab(select) {
  const files = await api("GET", "/api/lab");
  const show = (f) => {
    // reports are shown in the page (sandboxed); eval.json is linked beside them
    const q = `path=${encodeURIComponent(f.path)}${token ? `&token=${encodeURIComponent(token)}` : ""}`;
    $("#lab-report").replaceChildren(
      el("h3", { textContent: f.path }),
      el("iframe", { src: `/api/lab/report?${q}`, sandbox: "", title: f.path, className: "report" }),
    );
  };
  const reports = files.filter((f) => f.path.endsWith(".html"));
  $("#lab").replaceChildren(
    ...(files.length
      ? files.map((f) => {
          const li = el("li", { textContent: `${f.path} (${f.modified.slice(0, 19)})` });
          if (f.path.endsWith(".html")) {
            const b = el("button", { type: "button", textContent: "show" });
            b.onclick = () => show(f);
            li.append(" ", b);
          }
          return li;
        })
      : [el("li", { textContent: "no reports yet" })]),
  );
  const chosen = reports.find((f) => f.path === select) ?? reports[0];
  if (chosen) show(chosen);
  else $("#lab-report").replaceChildren();
}
// a finished evaluation job (studio-jobs.js) names its report
window.addEventListener("atelier:report", (ev) => loadLab(ev.detail.path));

const loaders = {
  models: () => Promise.all([loadModels(), loadMerge()]),
  train: () => Promise.all([loadTrain(), loadStudioJobs()]),
  jobs: loadJobs,
  generate: () => Promise.all([loadGenerate(), loadStudioJobs()]),
  library: loadLibrary,
  lab: () => Promise.all([loadLab(), loadStudioJobs()]),
};
showPage();
