// The job page: header (name, status, what failed), actions (cancel, re-run, duplicate,
// delete), the graph and node table followed live over the WebSocket — with each node's
// error or reason, an ETA from its progress rate, the seconds of music made so far and the
// latest preview frame of a rendering video — then the song plan, the outputs and the log.

import { get, request } from "./api.js";
import { $, banner, h, jobTitle } from "./dom.js";
import { fmtEta, fmtSeconds, fmtTime } from "./format.js";
import { drawGraph } from "./graph.js";
import { editName, removeJob, rerun } from "./jobactions.js";
import { renderArtifacts } from "./media.js";
import { duplicateJob, startWith } from "./newjob.js";
import { live, taskTitle } from "./session.js";
import { songPlan } from "./song.js";
import { FINISHED, TERMINAL } from "./statuses.js";

// how much a new progress sample moves the smoothed rate (the rest is the history)
const RATE_WEIGHT = 0.3;

let current = null; // {id, data, graph, eta: Map(node -> {t, p, rate}), extra: Map(node -> text)}

// What a finished node's output can start next: the trained voice speaks, the style renders.
const NEXT = {
  train_voice: { label: "Speak with this voice", task: "synthesize_voice", params: (o) => ({ voice: o.voice }) },
  train_lora: { label: "Render a video in this style", task: "render_video", params: (o, n) => ({ lora: o.lora,
    prompt: n.params?.instance_prompt }) },
};

/** What a music generator has made so far: "12.0 s of 30 s". */
function audioText(a) {
  return `${fmtSeconds(a.seconds)} of ${Math.round(a.of * 10) / 10} s`;
}

function fmtPct(n) {
  return `${Math.round((n.status === "succeeded" ? 1 : n.progress || 0) * 100)}%`;
}

/** Why a node failed, was skipped or cancelled: always visible, next to its status. */
function whyOf(n) {
  if (n.error) return `${n.error.type}${n.error.message ? `: ${n.error.message}` : ""}${n.reason ? ` (${n.reason})` : ""}`;
  return n.reason || "";
}

function nodeRow(n) {
  const live_ = current.extra.get(n.id) || "";
  const eta = n.status === "running" ? etaText(n.id, n.progress) : "";
  const next = NEXT[n.task];
  const nextButton = n.status === "succeeded" && next && n.output
    ? h("button", { type: "button", class: "node-next", text: next.label,
      onclick: () => startWith(next.task, next.params(n.output, n)) })
    : null;
  const why = whyOf(n);
  return h("tr", { "data-node": n.id, "data-status": n.status },
    h("th", { scope: "row", "data-label": "Node", text: n.id }),
    h("td", { "data-label": "Task", text: n.task, title: taskTitle(n.task) }),
    h("td", { "data-label": "Status" }, h("span", { class: `badge s-${n.status}`, text: n.status }),
      why ? h("p", { class: "node-why field-error", text: why }) : null, nextButton),
    h("td", { "data-label": "Progress" },
      h("progress", { max: 1, value: n.status === "succeeded" ? 1 : (n.progress || 0), "aria-label": `${n.id} progress` }),
      h("span", { class: "pct", text: ` ${fmtPct(n)}` }),
      live_ ? h("span", { class: "node-live muted", text: ` · ${live_}` }) : null,
      eta ? h("span", { class: "node-eta muted", text: ` · ${eta}` }) : null),
    h("td", { "data-label": "Attempts", text: String(n.attempts ?? 0) }));
}

/** Smoothed progress rate per node (fraction per second, from the events' own timestamps). */
function sample(nodeId, progress, ts) {
  const s = current.eta.get(nodeId);
  if (!s || progress < s.p) { current.eta.set(nodeId, { t: ts, p: progress, rate: null }); return; }
  const dt = ts - s.t;
  if (dt <= 0.05 || progress === s.p) return;
  const rate = (progress - s.p) / dt;
  s.rate = s.rate === null ? rate : RATE_WEIGHT * rate + (1 - RATE_WEIGHT) * s.rate;
  s.t = ts;
  s.p = progress;
}

function etaText(nodeId, progress) {
  const s = current.eta.get(nodeId);
  if (!s?.rate || s.rate <= 0) return "";
  return fmtEta((1 - (progress || 0)) / s.rate);
}

function renderHeader() {
  const job = current.data;
  $("#job-name-text").textContent = jobTitle(job);
  $("#job-id").textContent = job.id;
  document.title = `${jobTitle(job)} · dualplane`;
  const status = $("#job-status");
  status.className = `badge s-${job.status}`;
  status.textContent = job.status;
  status.dataset.status = job.status;
  const nodes = job.graph.nodes;
  const done = FINISHED.has(job.status);
  const progress = nodes.length
    ? nodes.reduce((s, n) => s + (TERMINAL.has(n.status) ? 1 : n.progress || 0), 0) / nodes.length
    : 0;
  $("#job-progress").value = done ? 1 : progress;
  $("#job-progress-text").textContent = `${Math.round((done ? 1 : progress) * 100)}% · created ${fmtTime(job.created_at)}`
    + (job.finished_at ? ` · finished ${fmtTime(job.finished_at)}` : "");
  $("#job-cancel").hidden = done;
  $("#job-cancel").disabled = job.cancel_requested;
  for (const id of ["#job-rerun-same", "#job-rerun-new", "#job-delete"]) $(id).disabled = !done;
  if (job.graph.metadata?.rerun_of) {
    const of = job.graph.metadata.rerun_of;
    $("#job-origin").replaceChildren("Re-run of ", h("a", { href: `#/jobs/${encodeURIComponent(of)}`, text: of }));
  } else {
    $("#job-origin").replaceChildren();
  }
  // the header says what failed: a dead letter, the job's own reason, else its first failed node
  const failed = nodes.find((n) => n.status === "failed" && n.error);
  let why = "";
  if (job.error?.startsWith("dead-lettered")) {
    why = `Dead-lettered: the job could not be processed and was set aside — ${job.error.replace(/^dead-lettered:\s*/, "")}`;
  } else if (job.error) {
    why = job.error;
  } else if (failed) {
    why = `Node ${failed.id} (${failed.task}) failed: ${failed.error.type}: ${failed.error.message}`;
  } else if (job.status === "cancelled") {
    why = "Cancelled.";
  }
  const err = $("#job-error");
  err.hidden = !why;
  err.textContent = why;
  err.dataset.dead = job.error?.startsWith("dead-lettered") ? "1" : "";
}

function renderNode(n) {
  current.graph?.update(n);
  const row = $(`#job-nodes tr[data-node="${CSS.escape(n.id)}"]`);
  if (row) row.replaceWith(nodeRow(n));
  if (n.task === "plan_song" && n.output?.sections && !$("#job-song").dataset.node) {
    $("#job-song").dataset.node = n.id;
    $("#job-song").replaceChildren(songPlan(n.output));
    $("#job-song-section").hidden = false;
  }
}

function logEvent(e) {
  const log = $("#job-log");
  const what = e.type === "progress" ? `${Math.round((e.progress || 0) * 100)}%`
    : e.type === "status" ? e.status
      : e.data?.artifact ? `artifact ${e.data.artifact.name}`
        : e.data?.preview ? `preview frame ${e.data.preview.step ?? ""}/${e.data.preview.of ?? ""}`
          : e.data?.audio_progress ? `audio ${audioText(e.data.audio_progress)}`
            : (e.message || "data");
  const text = `${new Date(e.ts * 1000).toLocaleTimeString()}  ${e.node_id || "job"}  ${e.type}: ${what}`
    + (e.message && (e.type === "status" || e.type === "progress") ? ` — ${e.message}` : "");
  const last = log.lastElementChild;
  // progress (and preview) events of one node collapse into one line: the log stays readable
  const kind = `${e.type}${e.data?.preview ? "-preview" : e.data?.audio_progress ? "-audio" : ""}:${e.node_id || ""}`;
  if ((e.type === "progress" || kind.startsWith("data-")) && last?.dataset.kind === kind) {
    last.textContent = text;
    last.dataset.seq = e.seq;
    return;
  }
  log.append(h("li", { "data-seq": e.seq, "data-kind": kind, text }));
  if (log.children.length > 500) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

/** The latest intermediate frame of a rendering node, replacing the one before. */
function showPreview(nodeId, preview) {
  const box = $("#job-previews");
  $("#job-previews-section").hidden = false;
  let fig = box.querySelector(`figure[data-node="${CSS.escape(nodeId)}"]`);
  const step = preview.of ? `step ${preview.step} of ${preview.of}` : preview.step !== undefined ? `step ${preview.step}` : "";
  if (!fig) {
    fig = h("figure", { class: "live-preview", "data-node": nodeId },
      h("img", { alt: "" }), h("figcaption", {}));
    box.append(fig);
  }
  const img = fig.querySelector("img");
  img.src = `data:${preview.mime || "image/jpeg"};base64,${preview.b64}`;
  if (preview.width) img.width = preview.width;
  if (preview.height) img.height = preview.height;
  img.alt = `Latest preview frame of ${nodeId}${step ? `, ${step}` : ""}`;
  fig.querySelector("figcaption").textContent = `${nodeId}: latest frame${step ? ` (${step})` : ""}`;
  fig.dataset.step = preview.step ?? "";
}

let artifactTimer = null;
function refreshArtifacts() {
  clearTimeout(artifactTimer);
  const job = current;
  artifactTimer = setTimeout(async () => {
    if (current !== job) return;
    try {
      const { artifacts } = await get(`/jobs/${encodeURIComponent(job.id)}/artifacts`);
      const durations = Object.fromEntries(job.data.graph.nodes.filter((n) => n.output?.duration_s)
        .map((n) => [n.id, n.output.duration_s]));
      if (current === job) renderArtifacts($("#job-artifacts"), artifacts, { durations });
    } catch (e) {
      if (current === job) banner(`Outputs: ${e.message}`);
    }
  }, 100);
}

async function refreshJob() {
  const job = current;
  try {
    const data = await get(`/jobs/${encodeURIComponent(job.id)}`);
    if (current !== job) return;
    job.data = data;
    renderHeader();
    data.graph.nodes.forEach(renderNode);
  } catch { /* live updates keep going */ }
}

function onMessage(m) {
  const job = current;
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
      job.graph = drawGraph($("#job-graph"), m.job.graph.nodes, { label: `Graph of job ${jobTitle(m.job)}` });
      $("#job-nodes").replaceChildren(...m.job.graph.nodes.map(nodeRow));
    }
    m.job.graph.nodes.forEach(renderNode);
    renderHeader();
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
      if (e.status !== "running") job.extra.delete(node.id);
      renderNode(node);
      if (TERMINAL.has(e.status)) refreshJob().then(refreshArtifacts);
    } else {
      job.data.status = e.status;
      if (FINISHED.has(e.status)) {
        job.data.finished_at = e.ts;
        if (e.message) job.data.error = e.message.startsWith("dead-lettered") ? e.message : job.data.error;
        refreshJob().then(refreshArtifacts);
      }
    }
  } else if (e.type === "progress" && node) {
    node.progress = e.progress ?? node.progress;
    sample(node.id, node.progress, e.ts);
    renderNode(node);
  } else if (e.type === "data" && node && e.data?.preview?.b64) {
    showPreview(node.id, e.data.preview);
  } else if (e.type === "data" && node && e.data?.audio_progress) {
    const a = e.data.audio_progress;
    job.extra.set(node.id, audioText(a));
    renderNode(node);
  } else if (e.type === "data" && e.data?.artifact) {
    refreshArtifacts();
  }
  renderHeader();
}

export function showJob(id) {
  if (current?.id === id) return;
  leaveJob();
  current = { id, data: null, graph: null, eta: new Map(), extra: new Map() };
  $("#job-name-text").textContent = "Job";
  $("#job-id").textContent = id;
  $("#job-status").textContent = "…";
  $("#job-status").className = "badge";
  $("#job-error").hidden = true;
  $("#job-origin").replaceChildren();
  $("#job-graph").replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  $("#job-nodes").replaceChildren();
  $("#job-log").replaceChildren();
  $("#job-song").replaceChildren();
  delete $("#job-song").dataset.node;
  $("#job-song-section").hidden = true;
  $("#job-previews").replaceChildren();
  $("#job-previews-section").hidden = true;
  $("#job-artifacts").replaceChildren(h("p", { class: "muted", text: "None yet." }));
  $("#job-progress").value = 0;
  live.subscribe(id, onMessage);
}

export function leaveJob() {
  if (current) live.unsubscribe(current.id);
  current = null;
}

async function onCancel() {
  if (!current) return;
  $("#job-cancel").disabled = true;
  try {
    await request("POST", `/jobs/${encodeURIComponent(current.id)}/cancel`);
  } catch (e) {
    $("#job-cancel").disabled = false;
    banner(`Cancel failed: ${e.message}`);
  }
}

export function wireJob() {
  $("#job-cancel").addEventListener("click", onCancel);
  $("#job-rename").addEventListener("click", () => {
    if (current?.data) editName($("#job-name-display"), current.data, (job) => { current.data.name = job.name; renderHeader(); });
  });
  $("#job-rerun-same").addEventListener("click", () => current?.data && rerun(current.data, "same"));
  $("#job-rerun-new").addEventListener("click", () => current?.data && rerun(current.data, "new"));
  $("#job-duplicate").addEventListener("click", () => current?.data && duplicateJob(current.data));
  $("#job-delete").addEventListener("click", async () => {
    if (current?.data && await removeJob(current.data)) location.hash = "#/jobs";
  });
}
