// Compare two outputs side by side: `#/compare?a=REF&b=REF`, where a REF is a job id (its main
// output: a video, else a track, else a picture) or job/node/name (that output). Under each
// player, the generator's settings, with the ones that differ marked.

import { get } from "./api.js";
import { $, h, jobTitle } from "./dom.js";
import { humanLabel } from "./form.js";
import { kindOf, mediaFigure } from "./media.js";

const RANK = { video: 0, audio: 1, image: 2, text: 3, other: 4 };

/** The output a job is "about": its video, else its track (the Opus twin streams), else a picture. */
function mainOutput(artifacts) {
  const shown = artifacts.filter((a) => a.name !== "poster.png" && a.content_type !== "audio/midi");
  const score = (a) => RANK[kindOf(a.content_type)] * 2 + (a.content_type === "audio/wav" ? 1 : 0);
  return shown.sort((x, y) => score(x) - score(y))[0] || null;
}

async function side(ref) {
  const [jobId, nodeId, ...rest] = ref.split("/");
  const name = rest.join("/");
  const [job, { artifacts }] = await Promise.all([get(`/jobs/${encodeURIComponent(jobId)}`),
    get(`/jobs/${encodeURIComponent(jobId)}/artifacts`)]);
  const output = nodeId ? artifacts.find((a) => a.node_id === nodeId && a.name === name) : mainOutput(artifacts);
  const poster = output && artifacts.find((a) => a.node_id === output.node_id && a.name === "poster.png");
  const node = job.graph.nodes.find((n) => n.id === output?.node_id) || job.graph.nodes[0];
  const duration = job.graph.nodes.find((n) => n.id === output?.node_id)?.output?.duration_s;
  return { job, output, node, poster, duration };
}

function settingsOf(node) {
  return Object.fromEntries(Object.entries(node?.params || {})
    .filter(([, v]) => v === null || typeof v !== "object").map(([k, v]) => [k, String(v)]));
}

function column(label, s, other) {
  const mine = settingsOf(s.node), theirs = settingsOf(other.node);
  const rows = Object.entries(mine).map(([k, v]) => h("tr", { class: theirs[k] !== v ? "differs" : "" },
    h("th", { scope: "row", text: humanLabel(k) }), h("td", { text: v })));
  return h("section", { class: "compare-side card", "data-side": label, "aria-label": `Output ${label}` },
    h("h2", {}, `${label}: `, h("a", { href: `#/jobs/${encodeURIComponent(s.job.id)}`, text: jobTitle(s.job) })),
    s.output
      ? mediaFigure({ ...s.output, caption: s.output.node_id, duration_s: s.duration, poster_url: kindOf(s.output.content_type) === "video" ? s.poster?.url : undefined })
      : h("p", { class: "muted", text: "This job has no output to show." }),
    rows.length ? h("details", { open: true }, h("summary", { text: `Settings of ${s.node.id} (${s.node.task})` }),
      h("table", { class: "settings" }, h("tbody", {}, rows))) : null);
}

export async function showCompare(query) {
  const params = new URLSearchParams(query);
  const a = params.get("a"), b = params.get("b");
  const box = $("#compare-body");
  if (!a || !b) {
    box.replaceChildren(h("p", { class: "muted", text: "Pick two jobs in the list, or two outputs in the gallery, to compare them here." }));
    return;
  }
  box.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  try {
    const [left, right] = await Promise.all([side(a), side(b)]);
    box.replaceChildren(column("A", left, right), column("B", right, left));
  } catch (e) {
    box.replaceChildren(h("p", { class: "field-error", role: "alert", text: `Cannot compare: ${e.message}` }));
  }
}
