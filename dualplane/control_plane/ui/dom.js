// Small DOM helpers shared by every view: element building, the page banner, error lists.

export const $ = (sel, root = document) => root.querySelector(sel);

/** h("a", {href, text, onclick}, ...children): attributes, `text`, `class` and on* listeners. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

export function banner(message) {
  const b = $("#banner");
  b.hidden = !message;
  b.textContent = message || "";
}

/** Announce a short message to screen readers (and show it briefly): "Job deleted". */
export function announce(message) {
  const box = $("#toast");
  box.textContent = message;
  box.hidden = !message;
  clearTimeout(announce.timer);
  announce.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

export function badge(status) {
  return h("span", { class: `badge s-${status}`, text: status });
}

/** Render a list of messages in an error box (role=alert); focus it unless told not to. */
export function showTopErrors(box, items, focus = true) {
  box.replaceChildren();
  box.hidden = items.length === 0;
  if (!items.length) return;
  box.append(h("ul", {}, items.map((item) => h("li", { text: item }))));
  if (focus) box.focus();
}

/** The job's display name: its own name, else the first task (ids are 32 hex characters). */
export function jobTitle(job) {
  return job.name || job.graph?.metadata?.name || (job.tasks || job.graph?.nodes?.map((n) => n.task) || [])[0]
    || job.id;
}

/** A modal "are you sure" (a <dialog>: focus moves into it, Escape cancels). Resolves true/false. */
export function confirmDialog(message, confirmLabel = "Delete") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = message;
  $("#confirm-ok").textContent = confirmLabel;
  dialog.showModal();
  $("#confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
