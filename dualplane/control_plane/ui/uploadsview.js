// The Uploads view: upload clips, images and lyrics (drop or choose; consent for voice clips),
// and list what is uploaded — name, kind, size, duration, a preview — with delete.

import { get, request, uploadFile } from "./api.js";
import { $, announce, banner, confirmDialog, h } from "./dom.js";
import { fmtTime } from "./format.js";
import { acceptFor, checkFile, preview, safeName, uploadError, uploadFacts } from "./uploads.js";

const KINDS = ["audio", "image", "text"];

function row(u) {
  const remove = h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${u.name}`,
    onclick: async () => {
      if (!await confirmDialog(`Delete the upload “${u.name}”? Jobs that name it can no longer read it.`)) return;
      try {
        await request("DELETE", `/uploads/${encodeURIComponent(u.sha256)}/${encodeURIComponent(u.name)}`);
        announce(`Deleted ${u.name}.`);
        loadUploads();
      } catch (e) {
        banner(`Delete failed: ${e.message}`);
      }
    } });
  return h("li", { class: "upload-item card", "data-key": u.key, "data-kind": u.kind },
    preview(u.kind, u.url, u.name) || h("span", { class: "thumb text-thumb", "aria-hidden": "true", text: "TXT" }),
    h("div", { class: "upload-info" },
      h("strong", { class: "upload-name", text: u.name }),
      h("span", { class: "muted", text: ` ${u.kind} · ${uploadFacts(u)}` }),
      u.kind === "audio" ? h("span", { class: u.consent ? "consent-yes" : "muted", text: u.consent ? " · speaker's consent given" : " · no consent recorded" }) : null,
      h("span", { class: "muted", text: ` · ${fmtTime(u.created_at)}` })),
    remove);
}

export async function loadUploads() {
  let page;
  try {
    page = await get("/uploads", { query: { kind: $("#uploads-kind").value } });
  } catch (e) {
    banner(`Uploads: ${e.message}`);
    return;
  }
  banner("");
  const list = $("#uploads-list");
  list.replaceChildren(...(page.uploads || []).map(row));
  $("#uploads-empty").hidden = list.children.length > 0;
}

async function addFiles(files) {
  const errors = $("#uploads-error");
  const problems = [];
  const progress = $("#uploads-progress");
  for (const file of files) {
    const check = await checkFile(file, KINDS);
    if (check.error) { problems.push(check.error); continue; }
    if (check.kind === "audio" && !$("#uploads-consent").checked) {
      problems.push(`${file.name}: tick “I have the speaker's consent” to upload a voice clip.`);
      continue;
    }
    const bar = h("progress", { max: 1, value: 0, "aria-label": `Uploading ${file.name}` });
    const item = h("li", {}, h("span", { text: `${file.name} ` }), bar);
    progress.append(item);
    try {
      await uploadFile(new File([file], file.name, { type: check.type }), {
        name: safeName(file.name), consent: check.kind === "audio" && $("#uploads-consent").checked,
        onProgress: (f) => { bar.value = f; },
      });
      announce(`Uploaded ${file.name}.`);
    } catch (e) {
      problems.push(uploadError(file, e));
    } finally {
      item.remove();
    }
  }
  errors.hidden = !problems.length;
  errors.textContent = problems.join(" ");
  loadUploads();
}

export function wireUploads() {
  const input = $("#uploads-file");
  input.accept = acceptFor(KINDS);
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  const zone = $("#uploads-drop");
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => { ev.preventDefault(); zone.classList.remove("over"); addFiles([...ev.dataTransfer.files]); });
  $("#uploads-kind").addEventListener("change", loadUploads);
}
