// The gallery: every output of the user's jobs, newest first (`GET /outputs`), filterable by
// kind, each with its player or picture, its job, and a pick for compare.

import { get } from "./api.js";
import { $, banner, h } from "./dom.js";
import { fmtTime } from "./format.js";
import { Picks } from "./jobactions.js";
import { groupTracks, mediaFigure } from "./media.js";
import { taskTitle } from "./session.js";

const PAGE = 24;
let cursor = null;
const picks = new Picks(renderCompareBar);

/** An output's reference in a compare link: job/node/name. */
export const outputRef = (o) => `${o.job_id}/${o.node_id}/${o.name}`;

function renderCompareBar(list) {
  $("#gallery-compare").disabled = list.length !== 2;
  $("#gallery-compare-state").textContent = `${list.length} of 2 outputs picked to compare.`;
  for (const box of document.querySelectorAll("#gallery-grid input.pick")) box.checked = picks.has(box.value);
}

function card({ main: o, also }) {
  const ref = outputRef(o);
  const pick = h("input", { type: "checkbox", class: "pick", value: ref, id: `pick-${ref.replace(/[^A-Za-z0-9_-]/g, "_")}`,
    onchange: (ev) => picks.toggle(ref, ev.target.checked) });
  pick.checked = picks.has(ref);
  const figure = mediaFigure({ ...o, key: ref }, { alt: `${o.name} from ${o.job_name || o.job_id}`, also });
  return h("li", { class: "gallery-item", "data-kind": o.kind, "data-job": o.job_id, "data-ref": ref }, figure,
    h("p", { class: "gallery-meta" },
      h("a", { href: `#/jobs/${encodeURIComponent(o.job_id)}`, text: o.job_name || o.job_id }),
      h("span", { class: "muted", text: ` · ${taskTitle(o.task)} · ${fmtTime(o.created_at)}` })),
    h("label", { class: "inline pick-label", for: pick.id }, pick, " compare"));
}

export async function loadGallery({ more = false } = {}) {
  const query = { kind: $("#gallery-kind").value, limit: PAGE };
  if (more && cursor) query.cursor = cursor;
  let page;
  try {
    page = await get("/outputs", { query });
  } catch (e) {
    banner(`Gallery: ${e.message}`);
    return;
  }
  banner("");
  const grid = $("#gallery-grid");
  // a track's Opus, WAV and MIDI are one card (the Opus plays; all three download)
  const items = groupTracks(page.outputs).map(card);
  if (more) grid.append(...items);
  else grid.replaceChildren(...items);
  cursor = page.next_cursor;
  $("#gallery-more").hidden = !cursor;
  $("#gallery-empty").hidden = grid.children.length > 0;
  renderCompareBar(picks.list);
}

export function wireGallery() {
  $("#gallery-kind").addEventListener("change", () => loadGallery());
  $("#gallery-more").addEventListener("click", () => loadGallery({ more: true }));
  $("#gallery-compare").addEventListener("click", () => { location.hash = picks.href(); });
}
