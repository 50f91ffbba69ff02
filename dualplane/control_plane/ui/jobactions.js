// Keep and redo, shared by the jobs list and the job page: rename (PATCH), re-run with the
// same seed or a new one, delete (purge, after a confirmation), and picking two for compare.

import { request } from "./api.js";
import { announce, banner, confirmDialog, h, jobTitle } from "./dom.js";

export async function rename(job, name) {
  const { body } = await request("PATCH", `/jobs/${encodeURIComponent(job.id)}`, { body: { name } });
  return body;
}

/** Re-run a job as a new one: `seed` "same" (the same result again) or "new" (a variation). */
export async function rerun(job, seed) {
  try {
    const { body } = await request("POST", `/jobs/${encodeURIComponent(job.id)}/rerun`, { body: { seed } });
    announce(`Re-running as a new job (${seed === "new" ? "new seed" : "same seed"}).`);
    location.hash = `#/jobs/${encodeURIComponent(body.id)}`;
    return body;
  } catch (e) {
    banner(`Re-run failed: ${e.message}`);
    return null;
  }
}

/** Delete a job and its outputs, once the user confirms. Resolves true when it is gone. */
export async function removeJob(job) {
  const ok = await confirmDialog(`Delete “${jobTitle(job)}” and all its outputs? This cannot be undone.`);
  if (!ok) return false;
  try {
    await request("DELETE", `/jobs/${encodeURIComponent(job.id)}`);
  } catch (e) {
    banner(e.status === 409 ? "This job is still running: cancel it first, then delete it." : `Delete failed: ${e.message}`);
    return false;
  }
  announce(`Deleted “${jobTitle(job)}”.`);
  return true;
}

/**
 * An inline name editor in place of `display`: an input with Save and Cancel (Enter / Escape).
 * `onSaved(job)` gets the updated job; the display comes back either way.
 */
export function editName(display, job, onSaved) {
  const input = h("input", { type: "text", value: jobTitle(job), maxlength: 200, class: "rename-input",
    "aria-label": "Job name" });
  const error = h("span", { class: "field-error", role: "alert" });
  const form = h("form", { class: "rename-form" }, input,
    h("button", { type: "submit", class: "primary", text: "Save" }),
    h("button", { type: "button", text: "Cancel", onclick: () => done() }), error);
  const done = () => {
    form.replaceWith(display);
    display.querySelector("button")?.focus();
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = input.value.trim();
    if (!name) { error.textContent = "A name cannot be empty."; input.focus(); return; }
    try {
      const updated = await rename(job, name);
      done();
      onSaved(updated);
      announce(`Renamed to “${name}”.`);
    } catch (e) {
      error.textContent = e.message;
      input.focus();
    }
  });
  input.addEventListener("keydown", (ev) => { if (ev.key === "Escape") done(); });
  display.replaceWith(form);
  input.select();
  input.focus();
}

/** Up to two picked items for the compare view; `onChange(list)` after each pick. */
export class Picks {
  constructor(onChange) { this.list = []; this.onChange = onChange; }

  has(ref) { return this.list.includes(ref); }

  toggle(ref, on) {
    this.list = this.list.filter((x) => x !== ref);
    if (on) this.list = [...this.list, ref].slice(-2); // a third pick replaces the oldest
    this.onChange(this.list);
  }

  href() { return `#/compare?a=${encodeURIComponent(this.list[0])}&b=${encodeURIComponent(this.list[1])}`; }
}
