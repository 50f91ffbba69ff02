// The new-job view: a generator's option form (built from its params schema) or a description
// for the planner (with uploaded voice clips, images and lyrics), the graph before it runs,
// and submission in the background or synchronously. `duplicateJob` loads a job back into it.

import { get, request } from "./api.js";
import { $, badge, h, showTopErrors } from "./dom.js";
import { buildForm } from "./form.js";
import { drawGraph } from "./graph.js";
import { renderArtifacts } from "./media.js";
import { session } from "./session.js";
import { songPlan } from "./song.js";
import { checkFile, uploadPicker } from "./uploads.js";

const MAX_SAVED_GENERATORS = 8;
const MAX_LYRICS_BYTES = 10000; // the intent's lyrics limit (characters; bytes bound them from above)

const state = {
  form: null,
  task: null,
  drafts: {}, // task -> params typed in this visit (switching generators keeps them)
  plan: null,
  clips: null, // the intent's upload pickers
  images: null,
};

// generators by what they make; internal (test and plumbing) tasks only when asked for
const KIND_LABELS = [["music", "Music"], ["voice", "Voice"], ["video", "Video"], ["training", "Training"],
  ["planning", "Planning"], ["media", "Mixing and muxing"], ["internal", "Internal and test tasks"]];

export function renderGeneratorSelect() {
  const select = $("#generator");
  const previous = select.value;
  const internal = $("#show-internal").checked;
  select.replaceChildren();
  for (const [kind, label] of KIND_LABELS) {
    if (kind === "internal" && !internal) continue;
    const group = h("optgroup", { label });
    for (const t of session.tasks.filter((x) => (x.kind || "internal") === kind)) {
      const title = t.title && t.title !== t.name ? t.title : t.name;
      group.append(h("option", { value: t.name, text: t.gpu ? `${title} · GPU` : title }));
    }
    if (group.children.length) select.append(group);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function ensureListed(name) {
  if (session.byName.get(name)?.kind === "internal" && !$("#show-internal").checked) {
    $("#show-internal").checked = true; // the user's generator is one of them
    renderGeneratorSelect();
  }
}

export function restorePreferences() {
  const p = session.prefs;
  const preferred = [p.last_generator, "arrange_music", session.tasks[0]?.name].find((n) => session.byName.has(n));
  ensureListed(preferred);
  state.drafts = { ...(p.options || {}) };
  $("#generator").value = preferred;
  selectGenerator(preferred);
  if (p.run === "sync" || p.run === "background") {
    document.querySelector(`input[name=run][value=${p.run}]`).checked = true;
  }
  if (p.wait) $("#wait").value = p.wait;
  if (p.source === "intent" || p.source === "generator") {
    document.querySelector(`input[name=source][value=${p.source}]`).checked = true;
  }
  fillIntent(p.intent);
  syncSource();
}

function fillIntent(intent) {
  state.clips ??= mountPicker("#intent-clips-slot", "intent-clips", "audio", "intent-clips-help");
  state.images ??= mountPicker("#intent-images-slot", "intent-images", "image", "intent-images-help");
  if (!intent) return;
  $("#intent").value = intent.prompt || "";
  $("#goal").value = intent.goal || "";
  $("#style").value = intent.style || "";
  $("#duration").value = intent.duration_s ?? "";
  $("#intent-lyrics").value = intent.inputs?.lyrics || "";
  state.clips.setKeys(intent.inputs?.voice_clips || []);
  state.images.setKeys(intent.inputs?.images || []);
  const mode = intent.options?.mode || "";
  const radio = document.querySelector(`input[name=song_mode][value="${mode}"]`);
  if (radio) radio.checked = true;
}

/** Offer uploads made since the pickers were built (in the Uploads view, another form). */
export function refreshPickers() {
  state.clips?.refresh();
  state.images?.refresh();
}

function mountPicker(slot, id, kind, help) {
  const picker = uploadPicker({ id, kind, consent: kind === "audio", describedBy: help, onChange: invalidatePlan });
  $(slot).replaceChildren(picker.element);
  return picker;
}

function nodeIdFor(task) { return task.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64); }

export function selectGenerator(name, values) {
  if (state.form && state.task) state.drafts[state.task] = state.form.read().params;
  const task = session.byName.get(name);
  state.task = name;
  if (!task) return;
  if (values) state.drafts[name] = values;
  $("#generator-help").textContent = `${task.description}${task.gpu ? " Runs on a GPU worker." : ""}`
    + ` (${task.plane} plane)`;
  state.form = buildForm($("#params"), task.params_schema, { values: state.drafts[name] || {}, models: session.models });
  showTopErrors($("#new-errors"), []);
  previewGenerator();
}

function source() { return document.querySelector("input[name=source]:checked").value; }

export function syncSource() {
  const intent = source() === "intent";
  $("#gen-panel").hidden = intent;
  $("#intent-panel").hidden = !intent;
  $("#submit").textContent = intent ? "Submit this plan" : "Submit job";
  if (intent) {
    refreshPickers();
    showPlan(state.plan);
  }
  else {
    $("#submit").disabled = false; // the planner's "nothing planned yet" does not apply to a generator
    previewGenerator();
  }
}

function previewGenerator() {
  if (source() !== "generator" || !state.task) return;
  const task = session.byName.get(state.task);
  const node = { id: nodeIdFor(task.name), task: task.name, plane: task.plane, needs: [] };
  $("#preview").hidden = false;
  $("#preview-title").textContent = "Graph";
  drawGraph($("#preview-graph"), [node], { label: `One node: ${task.name}` });
  $("#preview-notes").replaceChildren();
  $("#preview-song").replaceChildren();
}

function intentBody() {
  const intent = { prompt: $("#intent").value.trim() };
  const goal = $("#goal").value;
  const duration = $("#duration").value;
  const style = $("#style").value.trim();
  const lyrics = $("#intent-lyrics").value.trim();
  const mode = document.querySelector("input[name=song_mode]:checked").value;
  if (goal) intent.goal = goal;
  if (duration !== "") intent.duration_s = Number(duration);
  if (style) intent.style = style;
  const inputs = { voice_clips: state.clips?.keys() || [], images: state.images?.keys() || [] };
  if (lyrics) inputs.lyrics = lyrics;
  if (inputs.voice_clips.length || inputs.images.length || lyrics) intent.inputs = inputs;
  intent.options = mode ? { mode } : {};
  return intent;
}

function clearIntentError() {
  const err = $("#intent-error");
  err.hidden = true;
  err.textContent = "";
  $("#intent").removeAttribute("aria-invalid");
}

function intentError(message) {
  const err = $("#intent-error");
  err.hidden = false;
  err.textContent = message;
  $("#intent").setAttribute("aria-invalid", "true");
  $("#intent").focus();
}

async function onPlan() {
  clearIntentError();
  showTopErrors($("#new-errors"), []);
  const intent = intentBody();
  if (!intent.prompt) return intentError("Describe what you want first.");
  if (state.clips?.busy() || state.images?.busy()) return intentError("Wait for the uploads to finish.");
  $("#plan").disabled = true;
  $("#plan-state").textContent = "Planning…";
  try {
    const { body } = await request("POST", "/compose", { body: { intent, dry_run: true } });
    state.plan = { ...body, intent };
    showPlan(state.plan);
    $("#plan-state").textContent = `Planned: ${body.graph.nodes.length} nodes.`;
    $("#submit").focus();
  } catch (e) {
    state.plan = null;
    showPlan(null);
    $("#plan-state").textContent = "";
    const details = e.problem?.errors?.map((x) => x.message).join("; ");
    const notes = e.problem?.notes?.map((n) => n.message).join("; ");
    intentError(details || notes || e.message);
    if (e.problem?.node_errors) showTopErrors($("#new-errors"), nodeErrorLines(e.problem.node_errors), false);
  } finally {
    $("#plan").disabled = false;
  }
}

function showPlan(plan) {
  if (source() !== "intent") return;
  const preview = $("#preview");
  preview.hidden = !plan;
  $("#submit").disabled = !plan;
  if (!plan) return;
  $("#preview-title").textContent = `Planned graph (${plan.goal}, by ${plan.planner})`;
  drawGraph($("#preview-graph"), plan.graph.nodes, { label: `Planned graph, ${plan.graph.nodes.length} nodes` });
  // the song it will write, as text: a person reads lyrics, not JSON
  $("#preview-song").replaceChildren(...(plan.song ? [songPlan(plan.song)] : []));
  const notes = $("#preview-notes");
  // each note says how the plan differs from the request (clamped, substituted, ...): shown first
  notes.replaceChildren(...(plan.notes || []).map((n) => h("li", { class: `note note-${n.kind || "info"}`,
    text: typeof n === "string" ? n : `${n.kind}${n.part ? ` (${n.part})` : ""}: ${n.message}` })));
  if (plan.brief) {
    notes.append(h("li", {}, h("details", {}, h("summary", { text: "Brief: what the planner read" }),
      h("pre", { text: JSON.stringify(plan.brief, null, 2) }))));
  }
  for (const node of plan.graph.nodes) {
    notes.append(h("li", {}, h("details", {}, h("summary", { text: `${node.id}: ${node.task} (${node.plane})` }),
      h("pre", { text: JSON.stringify(node.params || {}, null, 2) }))));
  }
}

export function nodeErrorLines(nodeErrors, skip) {
  const lines = [];
  for (const [node, errs] of Object.entries(nodeErrors || {})) {
    if (node === skip) continue;
    for (const e of errs) lines.push(`${node === "_graph" ? "graph" : node}${e.field ? ` · ${e.field}` : ""}: ${e.message}`);
  }
  return lines;
}

function invalidatePlan() {
  if (!state.plan) return;
  state.plan = null;
  $("#plan-state").textContent = "";
  showPlan(null);
}

async function savePreferences(params) {
  const options = { ...(session.prefs.options || {}) };
  if (state.task) {
    delete options[state.task];
    options[state.task] = params ?? state.drafts[state.task] ?? {};
  }
  const names = Object.keys(options);
  for (const old of names.slice(0, Math.max(0, names.length - MAX_SAVED_GENERATORS))) delete options[old];
  const prefs = {
    ...session.prefs, last_generator: state.task, options, source: source(),
    run: document.querySelector("input[name=run]:checked").value, wait: Number($("#wait").value) || 60,
  };
  if (source() === "intent") prefs.intent = intentBody();
  try {
    await request("PUT", "/me/preferences", { body: prefs });
    session.prefs = prefs;
  } catch (e) {
    console.warn("preferences not saved", e);
  }
}

/** A job's default name: what it is about, in the user's words (the intent, the prompt...). */
function defaultName(params) {
  if (source() === "intent") return state.plan?.song?.title || $("#intent").value.trim().slice(0, 80);
  const words = params?.prompt || params?.text || params?.narrative || params?.instance_prompt;
  const title = session.byName.get(state.task)?.title || state.task;
  return (typeof words === "string" && words.trim() ? words.trim() : title).slice(0, 80);
}

async function onSubmit(ev) {
  ev.preventDefault();
  const top = $("#new-errors");
  showTopErrors(top, []);
  clearIntentError();
  state.form?.clearErrors();
  let graph, editedNode = null, params = null;
  if (source() === "generator") {
    const task = session.byName.get(state.task);
    if (!task) return showTopErrors(top, ["Choose a generator."]);
    const read = state.form.read();
    if (read.errors.length) return showTopErrors(top, state.form.showErrors(read.errors).map((e) => `${e.field}: ${e.message}`), false);
    params = read.params;
    state.drafts[task.name] = params;
    editedNode = nodeIdFor(task.name);
    graph = { nodes: [{ id: editedNode, task: task.name, plane: task.plane, params }],
      metadata: { submitted_from: "ui" } };
  } else {
    if (!state.plan) return intentError("Plan it first: the graph is shown before it is submitted.");
    // the intent travels with the job, so "duplicate" can bring it back into this form
    graph = { ...state.plan.graph, metadata: { ...(state.plan.graph.metadata || {}), submitted_from: "ui",
      intent: state.plan.intent } };
  }
  graph.metadata.name = $("#job-name").value.trim() || defaultName(params);
  const sync = document.querySelector("input[name=run]:checked").value === "sync";
  const wait = Math.max(1, Math.min(600, Number($("#wait").value) || 60));
  const submitButton = $("#submit");
  submitButton.disabled = true;
  $("#submit-state").textContent = sync ? `Running (waiting up to ${wait} s)…` : "Submitting…";
  $("#sync-result").hidden = true;
  let result;
  try {
    result = await request("POST", "/jobs", { body: graph, query: sync ? { wait } : {} });
  } catch (e) {
    $("#submit-state").textContent = "";
    submitButton.disabled = false;
    const nodeErrors = e.problem?.node_errors;
    const title = e.problem?.title || "Error";
    const lines = [];
    let atField = 0;
    if (nodeErrors) {
      const mine = (editedNode && nodeErrors[editedNode]) || [];
      const left = mine.length ? state.form.showErrors(mine) : [];
      atField = mine.length - left.length;
      lines.push(...left.map((x) => `${x.field || "params"}: ${x.message}`), ...nodeErrorLines(nodeErrors, editedNode));
    }
    if (lines.length || !atField) {
      const retry = e.status === 429 ? " Try again in a moment." : "";
      showTopErrors(top, [`${title}: ${lines.length ? "" : e.message}${retry}`.trim(), ...lines], !atField);
    } else {
      showTopErrors(top, [`${title}: see the highlighted field${atField > 1 ? "s" : ""}.`], false);
    }
    return;
  }
  submitButton.disabled = false;
  $("#submit-state").textContent = "";
  $("#job-name").value = "";
  await savePreferences(params);
  const job = result.body;
  if (!sync) {
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    return;
  }
  await showSyncResult(job, result.status === 202);
}

async function showSyncResult(job, stillRunning) {
  const body = $("#sync-body");
  const link = h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: `Open job ${job.name || job.id}` });
  body.replaceChildren(h("p", {}, badge(job.status), " ", link));
  if (stillRunning) {
    body.append(h("p", { class: "muted", text: "Still running after the wait; follow it in the job view." }));
  }
  for (const node of job.graph.nodes) {
    if (node.error) body.append(h("p", { class: "field-error", text: `${node.id}: ${node.error.message || node.error.type}` }));
    if (node.task === "plan_song" && node.output?.sections) body.append(songPlan(node.output));
    if (node.output) body.append(h("details", {}, h("summary", { text: `${node.id} output` }),
      h("pre", { text: JSON.stringify(node.output, null, 2) })));
  }
  const artifacts = h("div", { class: "artifacts" });
  body.append(artifacts);
  $("#sync-result").hidden = false;
  if (job.graph.nodes.some((n) => n.artifacts?.length)) {
    try {
      renderArtifacts(artifacts, (await get(`/jobs/${encodeURIComponent(job.id)}/artifacts`)).artifacts);
    } catch (e) {
      artifacts.append(h("p", { class: "field-error", text: e.message }));
    }
  }
  $("#sync-result").scrollIntoView({ block: "nearest" });
}

/**
 * Duplicate a job into this form to edit it: a planned job's intent goes to the planner form,
 * anything else loads its first generator node's params into that generator's form.
 */
export function duplicateJob(job) {
  const meta = job.graph.metadata || {};
  const intent = meta.intent || (meta.brief?.prompt ? { prompt: meta.brief.prompt } : null);
  if (intent) {
    document.querySelector("input[name=source][value=intent]").checked = true;
    fillIntent(intent);
    invalidatePlan();
  } else {
    const node = job.graph.nodes.find((n) => session.byName.get(n.task)?.kind !== "internal") || job.graph.nodes[0];
    document.querySelector("input[name=source][value=generator]").checked = true;
    ensureListed(node.task);
    $("#generator").value = node.task;
    selectGenerator(node.task, { ...(node.params || {}) });
  }
  $("#job-name").value = job.name ? `${job.name} (copy)` : "";
  syncSource();
  location.hash = "#/new";
}

/** Open the new-job form on `task` with some params set: "speak with this trained voice". */
export function startWith(task, params) {
  document.querySelector("input[name=source][value=generator]").checked = true;
  ensureListed(task);
  $("#generator").value = task;
  selectGenerator(task, { ...(state.drafts[task] || {}), ...params });
  syncSource();
  location.hash = "#/new";
}

export function wireNewJob() {
  $("#generator").addEventListener("change", (ev) => selectGenerator(ev.target.value));
  $("#show-internal").addEventListener("change", () => {
    renderGeneratorSelect();
    selectGenerator($("#generator").value);
  });
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", syncSource);
  for (const id of ["#intent", "#goal", "#duration", "#style", "#intent-lyrics"]) $(id).addEventListener("input", invalidatePlan);
  for (const radio of document.querySelectorAll("input[name=song_mode]")) radio.addEventListener("change", invalidatePlan);
  $("#intent-lyrics-file").addEventListener("change", async (ev) => {
    // lyrics are words in the intent, not an upload: the file is read here and never sent as is
    const file = ev.target.files[0];
    ev.target.value = "";
    if (!file) return;
    const check = await checkFile(file, ["text"], MAX_LYRICS_BYTES);
    if (check.error) return intentError(check.error);
    $("#intent-lyrics").value = await file.text();
    invalidatePlan();
  });
  $("#plan").addEventListener("click", onPlan);
  $("#new-form").addEventListener("submit", onSubmit);
  $("#new-errors").tabIndex = -1;
}
