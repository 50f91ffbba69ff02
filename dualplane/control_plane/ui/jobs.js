// The jobs list: name (editable inline), tasks, status, progress, created, and per-row
// re-run, duplicate and delete; pick two to compare. Polled while shown (first page only).

import { get } from "./api.js";
import { $, badge, banner, h, jobTitle } from "./dom.js";
import { fmtTime } from "./format.js";
import { editName, Picks, removeJob, rerun } from "./jobactions.js";
import { duplicateJob } from "./newjob.js";
import { FINISHED } from "./statuses.js";

const POLL_MS = 3000;
const PAGE = 50;
let cursor = null;
let timer = null;
// which load's answer the table shows: an older answer that arrives late is dropped
let loads = 0;
const picks = new Picks(renderCompareBar);

function renderCompareBar(list) {
  const button = $("#jobs-compare");
  button.disabled = list.length !== 2;
  $("#jobs-compare-state").textContent = list.length === 2 ? "2 jobs picked." : `${list.length} of 2 jobs picked to compare.`;
  for (const box of document.querySelectorAll("#jobs-table input.pick")) box.checked = picks.has(box.value);
}

function row(j) {
  const href = `#/jobs/${encodeURIComponent(j.id)}`;
  const title = jobTitle(j);
  const finished = FINISHED.has(j.status);
  const display = h("span", { class: "name-display" }, h("a", { href, text: title, class: "job-link" }),
    h("button", { type: "button", class: "link rename", text: "Rename", "aria-label": `Rename ${title}`,
      onclick: () => editName(display, j, (updated) => { j.name = updated.name; loadJobs(); }) }));
  const pick = h("input", { type: "checkbox", class: "pick", value: j.id, "aria-label": `Compare ${title}`,
    onchange: (ev) => picks.toggle(j.id, ev.target.checked) });
  pick.checked = picks.has(j.id);
  return h("tr", { "data-job": j.id, "data-status": j.status },
    h("td", { class: "pick-cell", "data-label": "Compare" }, pick),
    h("th", { scope: "row", "data-label": "Job" }, display, h("span", { class: "job-id muted", text: j.id })),
    h("td", { "data-label": "Tasks", text: (j.tasks || []).join(", ") }),
    h("td", { "data-label": "Status" }, badge(j.status)),
    h("td", { "data-label": "Progress" }, h("progress", { max: 1, value: j.progress || 0, "aria-label": `${title} progress` })),
    h("td", { "data-label": "Created", text: fmtTime(j.created_at) }),
    h("td", { class: "row-actions", "data-label": "Actions" },
      h("button", { type: "button", text: "Re-run", disabled: !finished, "aria-label": `Re-run ${title} with the same seed`,
        onclick: () => rerun(j, "same") }),
      h("button", { type: "button", text: "Duplicate", "aria-label": `Duplicate ${title} into the form`,
        onclick: async () => duplicateJob(await get(`/jobs/${encodeURIComponent(j.id)}`)) }),
      h("button", { type: "button", class: "danger", text: "Delete", disabled: !finished, "aria-label": `Delete ${title}`,
        onclick: async () => { if (await removeJob(j)) loadJobs(); } })));
}

export async function loadJobs({ more = false } = {}) {
  const query = { status: $("#filter-status").value, task: $("#filter-task").value, limit: PAGE };
  if (more && cursor) query.cursor = cursor;
  const load = ++loads;
  let page;
  try {
    page = await get("/jobs", { query });
  } catch (e) {
    banner(`Jobs: ${e.message}`);
    return;
  }
  if (load !== loads) return; // a later load (a poll, a filter change, a new visit) answers instead
  banner("");
  const body = $("#jobs-table tbody");
  if (body.querySelector(".rename-form")) return; // a name being typed is not thrown away by a poll
  const rows = page.jobs.map(row);
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  cursor = page.next_cursor;
  $("#jobs-more").hidden = !cursor;
  $("#jobs-empty").hidden = body.children.length > 0;
  $("#jobs-table").hidden = body.children.length === 0;
}

export function startJobs() {
  stopJobs();
  // the rows of an earlier visit may be gone (deleted meanwhile): never shown again
  $("#jobs-table tbody").replaceChildren();
  loadJobs();
  renderCompareBar(picks.list);
  timer = setInterval(() => {
    // poll only the first page, and not while the tab is hidden or a dialog is open
    if (!document.hidden && !$("#confirm").open && $("#jobs-table tbody").children.length <= PAGE) loadJobs();
  }, POLL_MS);
}

export function stopJobs() {
  clearInterval(timer);
  timer = null;
}

export function wireJobs() {
  $("#filter-status").addEventListener("change", () => loadJobs());
  $("#filter-task").addEventListener("change", () => loadJobs());
  $("#jobs-refresh").addEventListener("click", () => loadJobs());
  $("#jobs-more").addEventListener("click", () => loadJobs({ more: true }));
  $("#jobs-compare").addEventListener("click", () => { location.hash = picks.href(); });
}
