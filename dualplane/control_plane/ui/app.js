// dualplane web UI.
//
// Why plain HTML + vanilla ES modules (no framework, no bundler): the control plane serves
// these files as package data, so there is no build step to run or keep in sync, nothing to
// download at install time or from a CDN at page load (air-gapped hosts work), and the page
// is a handful of small files that load in well under a second. The UI is a thin client of
// the public API (the same /jobs, /compose, /tasks and /ws every other client uses), so it
// needs no server-side session or template either.

import { ApiError, Live, clearToken, decodeJwt, get, getToken, request, setToken } from "./api.js";
import { buildForm } from "./form.js";
import { drawGraph } from "./graph.js";

const $ = (sel) => document.querySelector(sel);
const FINISHED = new Set(["succeeded", "failed", "partial", "cancelled"]);
const JOBS_POLL_MS = 3000;
const MAX_SAVED_GENERATORS = 8;

const state = {
  tasks: [],
  byName: new Map(),
  models: [],
  prefs: {},
  form: null,
  task: null,
  drafts: {}, // task -> params typed in this visit (switching generators keeps them)
  plan: null,
  job: null,
  jobsTimer: null,
  booted: false,
};

const live = new Live({
  onState: (s) => {
    const badge = $("#live-state");
    badge.hidden = s === "off";
    badge.textContent = s === "live" ? "● live" : s === "connecting" ? "○ connecting" : "○ reconnecting";
    badge.dataset.state = s;
  },
  onUnauthorized: (reason) => signOut(`Your session ended: ${reason}. Sign in again.`),
});

// -- small DOM helpers ----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function banner(message) {
  const b = $("#banner");
  b.hidden = !message;
  b.textContent = message || "";
}

function fmtTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function badge(status) {
  return h("span", { class: `badge s-${status}`, text: status });
}

/** Render a problem next to the form: top-level list of messages. */
function showTopErrors(box, items, focus = true) {
  box.replaceChildren();
  box.hidden = items.length === 0;
  if (!items.length) return;
  const list = h("ul");
  for (const item of items) list.append(h("li", { text: item }));
  box.append(list);
  if (focus) box.focus();
}

// -- sign-in --------------------------------------------------------------------------

function showWho() {
  const claims = decodeJwt(getToken());
  const who = $("#who");
  if (!claims) {
    who.textContent = "";
    $("#signout").hidden = true;
    return;
  }
  who.textContent = `${claims.sub ?? "?"}${claims.role ? ` (${claims.role})` : ""}`;
  who.title = claims.exp ? `token expires ${new Date(claims.exp * 1000).toLocaleString()}` : "";
  $("#signout").hidden = false;
}

function signOut(message) {
  live.close();
  clearToken();
  state.booted = false;
  showWho();
  location.hash = "#/signin";
  const err = $("#token-error");
  err.hidden = !message;
  err.textContent = message || "";
}

async function onSignIn(ev) {
  ev.preventDefault();
  const input = $("#token");
  const err = $("#token-error");
  const token = input.value.trim().replace(/^Bearer\s+/i, "");
  err.hidden = true;
  const claims = decodeJwt(token);
  if (!claims) {
    err.hidden = false;
    err.textContent = "This is not a JWT (three base64url parts separated by dots).";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  try {
    await get("/me/preferences", { token });
  } catch (e) {
    err.hidden = false;
    err.textContent = e instanceof ApiError ? `${e.problem.title || "Error"}: ${e.message}` : String(e);
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  input.value = "";
  setToken(token);
  showWho();
  location.hash = "#/new";
  await boot();
}

// -- boot: catalog, registry, preferences ----------------------------------------------

async function boot() {
  if (state.booted) return;
  try {
    const [tasks, models, prefs] = await Promise.all([
      get("/tasks"), get("/models").catch(() => ({ models: [] })), get("/me/preferences").catch(() => ({})),
    ]);
    state.tasks = tasks.tasks;
    state.byName = new Map(state.tasks.map((t) => [t.name, t]));
    state.models = models.models || [];
    state.prefs = prefs || {};
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut(`Sign in again: ${e.message}`);
    banner(`Cannot load the task catalog: ${e.message}`);
    return;
  }
  state.booted = true;
  renderGeneratorSelect();
  restorePreferences();
  const taskFilter = $("#filter-task");
  taskFilter.replaceChildren(h("option", { value: "", text: "all" }),
    ...state.tasks.map((t) => h("option", { value: t.name, text: t.name })));
  performance.mark("dualplane:tasks-rendered");
  document.documentElement.dataset.ready = "1";
  route();
}

// generators by what they make; internal (test and plumbing) tasks only when asked for
const KIND_LABELS = [["music", "Music"], ["voice", "Voice"], ["video", "Video"], ["training", "Training"],
  ["planning", "Planning"], ["media", "Mixing and muxing"], ["internal", "Internal and test tasks"]];

function renderGeneratorSelect() {
  const select = $("#generator");
  const previous = select.value;
  const internal = $("#show-internal").checked;
  select.replaceChildren();
  for (const [kind, label] of KIND_LABELS) {
    if (kind === "internal" && !internal) continue;
    const group = h("optgroup", { label });
    for (const t of state.tasks.filter((x) => (x.kind || "internal") === kind)) {
      const title = t.title && t.title !== t.name ? t.title : t.name;
      group.append(h("option", { value: t.name, text: t.gpu ? `${title} · GPU` : title }));
    }
    if (group.children.length) select.append(group);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function restorePreferences() {
  const p = state.prefs;
  const preferred = [p.last_generator, "arrange_music", state.tasks[0]?.name].find((n) => state.byName.has(n));
  if (state.byName.get(preferred)?.kind === "internal") {
    $("#show-internal").checked = true; // the user's last generator was one of them
    renderGeneratorSelect();
  }
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
  if (p.intent) {
    $("#intent").value = p.intent.prompt || "";
    $("#goal").value = p.intent.goal || "";
    $("#style").value = p.intent.style || "";
    $("#duration").value = p.intent.duration_s ?? "";
    const mode = p.intent.options?.mode || "";
    const radio = document.querySelector(`input[name=song_mode][value="${mode}"]`);
    if (radio) radio.checked = true;
  }
  syncSource();
}

// -- new job ---------------------------------------------------------------------------

function nodeIdFor(task) { return task.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64); }

function selectGenerator(name) {
  if (state.form && state.task) state.drafts[state.task] = state.form.read().params;
  const task = state.byName.get(name);
  state.task = name;
  if (!task) return;
  $("#generator-help").textContent = `${task.description}${task.gpu ? " Runs on a GPU worker." : ""}`
    + ` (${task.plane} plane)`;
  state.form = buildForm($("#params"), task.params_schema, { values: state.drafts[name] || {}, models: state.models });
  showTopErrors($("#new-errors"), []);
  previewGenerator();
}

function source() { return document.querySelector("input[name=source]:checked").value; }

function syncSource() {
  const intent = source() === "intent";
  $("#gen-panel").hidden = intent;
  $("#intent-panel").hidden = !intent;
  $("#submit").textContent = intent ? "Submit this plan" : "Submit job";
  if (intent) showPlan(state.plan);
  else {
    $("#submit").disabled = false; // the planner's "nothing planned yet" does not apply to a generator
    previewGenerator();
  }
}

function previewGenerator() {
  if (source() !== "generator" || !state.task) return;
  const task = state.byName.get(state.task);
  const node = { id: nodeIdFor(task.name), task: task.name, plane: task.plane, needs: [] };
  $("#preview").hidden = false;
  $("#preview-title").textContent = "Graph";
  drawGraph($("#preview-graph"), [node], { label: `One node: ${task.name}` });
  $("#preview-notes").replaceChildren();
}

function intentBody() {
  const intent = { prompt: $("#intent").value.trim() };
  const goal = $("#goal").value;
  const duration = $("#duration").value;
  const style = $("#style").value.trim();
  const mode = document.querySelector("input[name=song_mode]:checked").value;
  if (goal) intent.goal = goal;
  if (duration !== "") intent.duration_s = Number(duration);
  if (style) intent.style = style;
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
  $("#plan").disabled = true;
  try {
    const { body } = await request("POST", "/compose", { body: { intent, dry_run: true } });
    state.plan = { ...body, intent };
    showPlan(state.plan);
    $("#submit").focus();
  } catch (e) {
    state.plan = null;
    showPlan(null);
    if (e.status === 401) return signOut(e.message);
    const details = e.problem?.errors?.map((x) => x.message).join("; ");
    intentError(details || e.message);
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
  const notes = $("#preview-notes");
  // each note says how the plan differs from the request (clamped, substituted, ...): shown first
  notes.replaceChildren(...(plan.notes || []).map((n) => h("li", { class: `note note-${n.kind || "info"}`,
    text: typeof n === "string" ? n : `${n.kind}${n.part ? ` (${n.part})` : ""}: ${n.message}` })));
  if (plan.brief) {
    notes.append(h("li", {}, h("details", {}, h("summary", { text: "Brief: what the planner read" }),
      h("pre", { text: JSON.stringify(plan.brief, null, 2) }))));
  }
  if (plan.song && plan.song.lyrics_text) {
    notes.append(h("li", {}, h("details", {}, h("summary", { text: `Song: ${plan.song.title} (${plan.song.key}, ${plan.song.bpm} bpm)` }),
      h("pre", { text: plan.song.lyrics_text }))));
  }
  for (const node of plan.graph.nodes) {
    notes.append(h("li", {}, h("details", {}, h("summary", { text: `${node.id}: ${node.task} (${node.plane})` }),
      h("pre", { text: JSON.stringify(node.params || {}, null, 2) }))));
  }
}

function nodeErrorLines(nodeErrors, skip) {
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
  showPlan(null);
}

async function savePreferences(params) {
  const options = { ...(state.prefs.options || {}) };
  if (state.task) {
    delete options[state.task];
    options[state.task] = params ?? state.drafts[state.task] ?? {};
  }
  const names = Object.keys(options);
  for (const old of names.slice(0, Math.max(0, names.length - MAX_SAVED_GENERATORS))) delete options[old];
  const prefs = {
    ...state.prefs, last_generator: state.task, options, source: source(),
    run: document.querySelector("input[name=run]:checked").value, wait: Number($("#wait").value) || 60,
  };
  if (source() === "intent") prefs.intent = intentBody();
  try {
    await request("PUT", "/me/preferences", { body: prefs });
    state.prefs = prefs;
  } catch (e) {
    console.warn("preferences not saved", e);
  }
}

async function onSubmit(ev) {
  ev.preventDefault();
  const top = $("#new-errors");
  showTopErrors(top, []);
  clearIntentError();
  state.form?.clearErrors();
  let graph, editedNode = null, params = null;
  if (source() === "generator") {
    const task = state.byName.get(state.task);
    if (!task) return showTopErrors(top, ["Choose a generator."]);
    const read = state.form.read();
    if (read.errors.length) return showTopErrors(top, state.form.showErrors(read.errors).map((e) => `${e.field}: ${e.message}`));
    params = read.params;
    state.drafts[task.name] = params;
    editedNode = nodeIdFor(task.name);
    graph = { nodes: [{ id: editedNode, task: task.name, plane: task.plane, params }],
      metadata: { submitted_from: "ui" } };
  } else {
    if (!state.plan) return intentError("Plan it first: the graph is shown before it is submitted.");
    graph = { ...state.plan.graph, metadata: { ...(state.plan.graph.metadata || {}), submitted_from: "ui" } };
  }
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
    if (e.status === 401) return signOut(e.message);
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
  const link = h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: `Open job ${job.id}` });
  body.replaceChildren(h("p", {}, badge(job.status), " ", link));
  if (stillRunning) {
    body.append(h("p", { class: "muted", text: "Still running after the wait; follow it in the job view." }));
  }
  for (const node of job.graph.nodes) {
    if (node.error) body.append(h("p", { class: "field-error", text: `${node.id}: ${node.error.message || node.error.type}` }));
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

// -- artifacts -------------------------------------------------------------------------

function renderArtifacts(container, artifacts) {
  if (!artifacts.length) {
    container.replaceChildren(h("p", { class: "muted", text: "None yet." }));
    return;
  }
  const existing = new Map([...container.querySelectorAll("[data-key]")].map((n) => [n.dataset.key, n]));
  // a track stored as WAV and Opus gets one player (the Opus, light to stream); both download
  const stem = (a) => `${a.node_id}/${a.name.replace(/\.[^.]+$/, "")}`;
  const compressed = new Set(artifacts.filter((a) => a.content_type === "audio/ogg").map(stem));
  const playable = (a, type) => type.startsWith("audio/") && type !== "audio/midi"
    && !(type === "audio/wav" && compressed.has(stem(a)));
  const items = artifacts.map((a) => {
    const keep = existing.get(a.key);
    if (keep) return keep; // keep a playing player as it is
    const type = a.content_type || "";
    let media = null;
    if (a.url && playable(a, type)) media = h("audio", { controls: true, preload: "metadata", src: a.url });
    else if (a.url && type.startsWith("video/")) media = h("video", { controls: true, preload: "metadata", src: a.url, playsinline: true });
    else if (a.url && type.startsWith("image/")) media = h("img", { src: a.url, alt: `${a.name} from ${a.node_id}`, loading: "lazy" });
    const download = a.url
      ? h("a", { href: a.url, download: a.name, class: "download", text: `Download ${a.name}` })
      : h("span", { class: "muted", text: "no object store URL" });
    return h("figure", { class: "artifact", "data-key": a.key, "data-type": type }, media,
      h("figcaption", {}, h("strong", { text: a.name }), ` · ${a.node_id} · ${type} · ${fmtBytes(a.size)} `, download));
  });
  container.replaceChildren(...items);
}

// -- job view --------------------------------------------------------------------------

function nodeRow(n) {
  const progress = h("progress", { max: 1, value: n.status === "succeeded" ? 1 : (n.progress || 0),
    "aria-label": `${n.id} progress` });
  // why a node failed, was skipped or cancelled: always on the page, next to its status
  const why = n.error ? `${n.error.type}: ${n.error.message}` : n.reason || "";
  return h("tr", { "data-node": n.id, "data-status": n.status },
    h("th", { scope: "row", text: n.id }), h("td", { text: n.task }),
    h("td", {}, badge(n.status), why ? h("p", { class: "node-why field-error", text: why }) : null),
    h("td", {}, progress, h("span", { class: "pct", text: ` ${Math.round((n.status === "succeeded" ? 1 : n.progress || 0) * 100)}%` })),
    h("td", { text: String(n.attempts ?? 0) }));
}

function renderJobHeader() {
  const job = state.job.data;
  $("#job-id").textContent = job.id;
  const status = $("#job-status");
  status.className = `badge s-${job.status}`;
  status.textContent = job.status;
  status.dataset.status = job.status;
  const nodes = job.graph.nodes;
  const progress = nodes.length
    ? nodes.reduce((s, n) => s + (FINISHED.has(n.status) || n.status === "skipped" ? 1 : n.progress || 0), 0) / nodes.length
    : 0;
  $("#job-progress").value = FINISHED.has(job.status) ? 1 : progress;
  $("#job-progress-text").textContent = `${Math.round((FINISHED.has(job.status) ? 1 : progress) * 100)}% · created ${fmtTime(job.created_at)}`
    + (job.finished_at ? ` · finished ${fmtTime(job.finished_at)}` : "");
  $("#job-cancel").disabled = FINISHED.has(job.status) || job.cancel_requested;
  // the header says what failed: the job's own reason, else its first failed node's error
  const failed = nodes.find((n) => n.status === "failed" && n.error);
  const why = job.error || (failed ? `node ${failed.id} (${failed.task}) failed: ${failed.error.type}: ${failed.error.message}` : "");
  const err = $("#job-error");
  err.hidden = !why;
  err.textContent = why;
}

function renderNode(n) {
  state.job.graph?.update(n);
  const row = $(`#job-nodes tr[data-node="${CSS.escape(n.id)}"]`);
  if (row) row.replaceWith(nodeRow(n));
}

function logEvent(e) {
  const log = $("#job-log");
  const what = e.type === "progress" ? `${Math.round((e.progress || 0) * 100)}%`
    : e.type === "status" ? e.status : e.data?.artifact ? `artifact ${e.data.artifact.name}` : (e.message || "data");
  const text = `${new Date(e.ts * 1000).toLocaleTimeString()}  ${e.node_id || "job"}  ${e.type}: ${what}`
    + (e.message && e.type !== "data" ? ` — ${e.message}` : "");
  const last = log.lastElementChild;
  // progress events of one node collapse into one line: the log stays readable
  if (e.type === "progress" && last?.dataset.kind === `progress:${e.node_id}`) {
    last.textContent = text;
    last.dataset.seq = e.seq;
    return;
  }
  log.append(h("li", { "data-seq": e.seq, "data-kind": `${e.type}:${e.node_id || ""}`, text }));
  if (log.children.length > 500) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

let artifactTimer = null;
function refreshArtifacts() {
  clearTimeout(artifactTimer);
  const job = state.job;
  artifactTimer = setTimeout(async () => {
    if (state.job !== job) return;
    try {
      const { artifacts } = await get(`/jobs/${encodeURIComponent(job.id)}/artifacts`);
      if (state.job === job) renderArtifacts($("#job-artifacts"), artifacts);
    } catch (e) {
      if (state.job === job) banner(`Artifacts: ${e.message}`);
    }
  }, 100);
}

async function refreshJob() {
  const job = state.job;
  try {
    const data = await get(`/jobs/${encodeURIComponent(job.id)}`);
    if (state.job !== job) return;
    job.data = data;
    renderJobHeader();
    data.graph.nodes.forEach(renderNode);
  } catch { /* live updates keep going */ }
}

function onJobMessage(m) {
  const job = state.job;
  if (!job || m.jobId !== job.id) return;
  if (m.type === "error") {
    const err = $("#job-error");
    err.hidden = false;
    err.textContent = m.message === "no such job" ? `No job ${job.id} (or it is not yours).` : m.message;
    return;
  }
  if (m.type === "snapshot") {
    const first = !job.data;
    job.data = m.job;
    if (first) {
      job.graph = drawGraph($("#job-graph"), m.job.graph.nodes, { label: `Graph of job ${m.job.id}` });
      $("#job-nodes").replaceChildren(...m.job.graph.nodes.map(nodeRow));
    } else {
      m.job.graph.nodes.forEach(renderNode);
    }
    renderJobHeader();
    if (m.job.graph.nodes.some((n) => n.artifacts?.length)) refreshArtifacts();
    return;
  }
  if (m.type !== "update" || !job.data) return;
  const e = m.event;
  logEvent(e);
  const node = e.node_id ? job.data.graph.nodes.find((n) => n.id === e.node_id) : null;
  if (e.type === "status") {
    if (node) {
      node.status = e.status;
      if (e.attempt) node.attempts = e.attempt;
      if (e.status === "succeeded") node.progress = 1;
      renderNode(node);
      if (FINISHED.has(e.status)) refreshArtifacts();
    } else {
      job.data.status = e.status;
      if (FINISHED.has(e.status)) {
        job.data.finished_at = e.ts;
        refreshJob().then(refreshArtifacts);
      }
    }
  } else if (e.type === "progress" && node) {
    node.progress = e.progress ?? node.progress;
    renderNode(node);
  } else if (e.type === "data" && e.data?.artifact) {
    refreshArtifacts();
  }
  renderJobHeader();
}

function showJob(id) {
  if (state.job?.id === id) return;
  if (state.job) live.unsubscribe(state.job.id);
  state.job = { id, data: null, graph: null };
  $("#job-id").textContent = id;
  $("#job-status").textContent = "…";
  $("#job-status").className = "badge";
  $("#job-error").hidden = true;
  $("#job-graph").replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  $("#job-nodes").replaceChildren();
  $("#job-log").replaceChildren();
  $("#job-artifacts").replaceChildren(h("p", { class: "muted", text: "None yet." }));
  $("#job-progress").value = 0;
  live.subscribe(id, onJobMessage);
}

async function onCancel() {
  const job = state.job;
  if (!job) return;
  $("#job-cancel").disabled = true;
  try {
    await request("POST", `/jobs/${encodeURIComponent(job.id)}/cancel`);
  } catch (e) {
    $("#job-cancel").disabled = false;
    banner(`Cancel failed: ${e.message}`);
  }
}

// -- jobs list -------------------------------------------------------------------------

let jobsCursor = null;

async function loadJobs({ more = false } = {}) {
  const query = { status: $("#filter-status").value, task: $("#filter-task").value, limit: 50 };
  if (more && jobsCursor) query.cursor = jobsCursor;
  let page;
  try {
    page = await get("/jobs", { query });
  } catch (e) {
    if (e.status === 401) return signOut(e.message);
    banner(`Jobs: ${e.message}`);
    return;
  }
  banner("");
  const rows = page.jobs.map((j) => h("tr", { "data-job": j.id, "data-status": j.status },
    h("th", { scope: "row" }, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}`, text: j.id })),
    h("td", { text: (j.tasks || []).join(", ") }), h("td", {}, badge(j.status)),
    h("td", {}, h("progress", { max: 1, value: j.progress || 0, "aria-label": `${j.id} progress` })),
    h("td", { text: fmtTime(j.created_at) })));
  const body = $("#jobs-table tbody");
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  jobsCursor = page.next_cursor;
  $("#jobs-more").hidden = !jobsCursor;
  $("#jobs-empty").hidden = body.children.length > 0;
}

function startJobsPolling() {
  stopJobsPolling();
  loadJobs();
  state.jobsTimer = setInterval(() => {
    // poll only the first page, and not while the tab is hidden
    if (!document.hidden && !$("#jobs-table tbody").querySelector("tr:nth-child(51)")) loadJobs();
  }, JOBS_POLL_MS);
}

function stopJobsPolling() {
  clearInterval(state.jobsTimer);
  state.jobsTimer = null;
}

// -- routing ---------------------------------------------------------------------------

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view || (view === "job" && a.dataset.nav === "jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route() {
  const hash = location.hash || "#/new";
  if (!getToken()) {
    stopJobsPolling();
    show("signin");
    $("#token").focus();
    return;
  }
  if (!state.booted) return; // boot() routes when the catalog is in
  banner("");
  const jobMatch = hash.match(/^#\/jobs\/([A-Za-z0-9_-]{1,64})$/);
  if (jobMatch) {
    stopJobsPolling();
    show("job");
    document.title = `Job ${jobMatch[1]} · dualplane`;
    showJob(jobMatch[1]);
  } else if (hash === "#/jobs") {
    show("jobs");
    document.title = "Jobs · dualplane";
    startJobsPolling();
  } else {
    stopJobsPolling();
    show("new");
    document.title = "New job · dualplane";
  }
  if (!jobMatch && state.job) {
    live.unsubscribe(state.job.id);
    state.job = null;
  }
}

// -- wiring ----------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", onSignIn);
  $("#signout").addEventListener("click", () => signOut(""));
  $("#generator").addEventListener("change", (ev) => selectGenerator(ev.target.value));
  $("#show-internal").addEventListener("change", () => {
    renderGeneratorSelect();
    selectGenerator($("#generator").value);
  });
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", syncSource);
  for (const id of ["#intent", "#goal", "#duration", "#style"]) $(id).addEventListener("input", invalidatePlan);
  for (const radio of document.querySelectorAll("input[name=song_mode]")) radio.addEventListener("change", invalidatePlan);
  $("#plan").addEventListener("click", onPlan);
  $("#new-form").addEventListener("submit", onSubmit);
  $("#job-cancel").addEventListener("click", onCancel);
  $("#filter-status").addEventListener("change", () => loadJobs());
  $("#filter-task").addEventListener("change", () => loadJobs());
  $("#jobs-refresh").addEventListener("click", () => loadJobs());
  $("#jobs-more").addEventListener("click", () => loadJobs({ more: true }));
  $("#new-errors").tabIndex = -1;
  window.addEventListener("hashchange", route);
}

wire();
showWho();
route();
if (getToken()) boot();

// for tests and debugging: the live connection (e.g. `dualplane.live.drop()` to simulate a drop)
window.dualplane = { live, state };
