// Bring your own inputs: checking a file before it is sent (type by its first bytes, size),
// uploading it with a progress bar, and the picker that generator forms and the planner use
// for params that take upload keys (train_voice's clips, train_lora's images, the intent's
// voice clips and images).

import { ApiError, get, uploadFile } from "./api.js";
import { h } from "./dom.js";
import { fmtBytes, fmtDuration } from "./format.js";

/** The control plane's default upload limit (Settings.max_upload_bytes); a smaller server limit
 * still answers 413, which is shown the same way. */
export const MAX_UPLOAD_BYTES = 64 * 1024 * 1024;

// What POST /uploads accepts, by the file's first bytes (the server checks the same magic).
const TYPES = [
  { type: "audio/wav", kind: "audio", ext: ["wav", "wave"], magic: (b) => ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 12) === "WAVE" },
  { type: "audio/mpeg", kind: "audio", ext: ["mp3"], magic: (b) => ascii(b, 0, 3) === "ID3" || (b[0] === 0xff && (b[1] & 0xe0) === 0xe0) },
  { type: "audio/ogg", kind: "audio", ext: ["ogg", "oga", "opus"], magic: (b) => ascii(b, 0, 4) === "OggS" },
  { type: "audio/flac", kind: "audio", ext: ["flac"], magic: (b) => ascii(b, 0, 4) === "fLaC" },
  { type: "audio/webm", kind: "audio", ext: ["webm", "weba"], magic: (b) => b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3 },
  { type: "image/png", kind: "image", ext: ["png"], magic: (b) => b[0] === 0x89 && ascii(b, 1, 4) === "PNG" },
  { type: "image/jpeg", kind: "image", ext: ["jpg", "jpeg"], magic: (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff },
  { type: "image/webp", kind: "image", ext: ["webp"], magic: (b) => ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 12) === "WEBP" },
  { type: "text/plain", kind: "text", ext: ["txt", "lrc"], magic: (b) => !b.includes(0) },
];

const KIND_WORDS = { audio: "audio clips (WAV, MP3, Ogg/Opus, FLAC, WebM)", image: "images (PNG, JPEG, WebP)",
  text: "text files (.txt)" };

function ascii(bytes, from, to) { return String.fromCharCode(...bytes.slice(from, to)); }

/** The `accept` attribute of a file input for these kinds. */
export function acceptFor(kinds) {
  return TYPES.filter((t) => kinds.includes(t.kind)).flatMap((t) => [t.type, ...t.ext.map((e) => `.${e}`)]).join(",");
}

/** A name the API takes (`[A-Za-z0-9_.-]{1,128}`), keeping the extension. */
export function safeName(name) {
  const clean = name.normalize("NFKD").replace(/[^A-Za-z0-9_.-]+/g, "_").replace(/^[._]+/, "") || "file";
  const dot = clean.lastIndexOf(".");
  const ext = dot > 0 ? clean.slice(dot) : "";
  return clean.length <= 128 ? clean : clean.slice(0, 128 - ext.length) + ext;
}

/**
 * Check a file before uploading it: {type, kind} or {error} saying what is wrong in words.
 * The type comes from the first bytes, so a renamed file is caught here, not after the upload.
 */
export async function checkFile(file, kinds, maxBytes = MAX_UPLOAD_BYTES) {
  if (file.size === 0) return { error: `${file.name} is empty.` };
  if (file.size > maxBytes) {
    return { error: `${file.name} is ${fmtBytes(file.size)}; uploads can be at most ${fmtBytes(maxBytes)}.` };
  }
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  const known = TYPES.filter((t) => t.kind !== "text").find((t) => t.magic(head))
    || (TYPES.at(-1).ext.includes(ext) && TYPES.at(-1).magic(new Uint8Array(await file.slice(0, 4096).arrayBuffer()))
      ? TYPES.at(-1) : null);
  const wanted = kinds.map((k) => KIND_WORDS[k]).join(" or ");
  if (!known) return { error: `${file.name} is not one of the accepted ${wanted}.` };
  if (!kinds.includes(known.kind)) return { error: `${file.name} is ${known.kind === "image" ? "an" : "a"} ${known.kind} file; this takes ${wanted}.` };
  return { type: known.type, kind: known.kind };
}

/** An API error of an upload, as a sentence. */
export function uploadError(file, e) {
  if (!(e instanceof ApiError)) return `${file.name}: ${e.message || e}`;
  if (e.status === 413) return `${file.name} is too large for this server (${fmtBytes(file.size)}).`;
  if (e.status === 415) return `${file.name} was refused: ${e.problem.detail || "unsupported upload"}.`;
  return `${file.name}: ${e.problem.title || "upload failed"}${e.problem.detail ? ` — ${e.problem.detail}` : ""}`;
}

/** Small preview of an upload or a local file: an audio player, an image thumbnail, or nothing. */
export function preview(kind, url, name) {
  if (!url) return null;
  if (kind === "audio") return h("audio", { controls: true, preload: "metadata", src: url, "aria-label": `Play ${name}` });
  if (kind === "image") return h("img", { class: "thumb", src: url, alt: name, loading: "lazy" });
  return null;
}

export function uploadFacts(u) {
  return [fmtBytes(u.size), u.duration_s ? fmtDuration(u.duration_s) : "",
    u.width && u.height ? `${u.width}×${u.height}` : ""].filter(Boolean).join(" · ");
}

let pickerId = 0;

/**
 * A picker of uploads for one param (or intent input): drop files or choose them, or pick from
 * earlier uploads. Keys fill in as uploads finish. `kind`: "audio" | "image" | "text".
 * Returns {element, input (what the label points at), keys(), setKeys(keys), busy(), refresh()}.
 */
export function uploadPicker({ id = `upload-${++pickerId}`, kind, multiple = true, keys = [], consent = false,
  describedBy = "", onChange = () => {} } = {}) {
  const errorId = `${id}-upload-error`;
  const input = h("input", { id, type: "file", accept: acceptFor([kind]), multiple, class: "file-input",
    "aria-describedby": `${describedBy} ${errorId}`.trim() });
  const errors = h("p", { id: errorId, class: "field-error", role: "alert", hidden: true });
  const list = h("ul", { class: "picked", "aria-label": "Chosen files", "aria-live": "polite" });
  const consentBox = consent ? h("input", { type: "checkbox", id: `${id}-consent`, class: "consent" }) : null;
  const existing = h("select", { id: `${id}-existing`, "aria-label": "Add one of your uploads" },
    h("option", { value: "", text: "add one of your uploads…" }));
  const entries = []; // {key, name, state: uploading|done|failed, li}
  let library = [];

  const zone = h("div", { class: "dropzone", "data-kind": kind },
    h("p", { class: "drop-hint", text: `Drop ${KIND_WORDS[kind]} here, or ` }), input,
    consentBox ? h("label", { class: "inline consent-label", for: consentBox.id }, consentBox,
      " I have the speaker's consent") : null);
  const element = h("div", { class: "upload-picker", "data-picker": kind }, zone,
    h("div", { class: "existing" }, existing), errors, list);

  const showError = (lines) => {
    errors.hidden = !lines.length;
    errors.textContent = lines.join(" ");
  };
  const changed = () => onChange(keysOf());
  const keysOf = () => entries.filter((e) => e.state === "done").map((e) => e.key);

  function addItem({ key, name, url, upload, file }) {
    if (!multiple) entries.splice(0).forEach((e) => e.li.remove());
    const entry = { key, name, state: key ? "done" : "uploading" };
    const bar = h("progress", { max: 1, value: 0, "aria-label": `Uploading ${name}` });
    const status = h("span", { class: "muted upload-status", text: upload ? uploadFacts(upload) : key ? "" : "uploading…" });
    const remove = h("button", { type: "button", class: "link", text: "Remove", "aria-label": `Remove ${name}`,
      onclick: () => {
        entries.splice(entries.indexOf(entry), 1);
        entry.li.remove();
        changed();
        input.focus();
      } });
    entry.li = h("li", { class: "picked-item", "data-name": name, "data-state": entry.state },
      preview(kind, url, name), h("span", { class: "picked-name", text: name }), status,
      entry.state === "uploading" ? bar : null, remove);
    entry.bar = bar;
    entry.status = status;
    entry.file = file;
    entries.push(entry);
    list.append(entry.li);
    return entry;
  }

  function finish(entry, state, text, key) {
    entry.state = state;
    entry.key = key ?? entry.key;
    entry.li.dataset.state = state;
    entry.status.textContent = text;
    entry.bar.remove();
  }

  async function addFiles(files) {
    const problems = [];
    if (consentBox && !consentBox.checked && files.length) {
      showError(["Tick “I have the speaker's consent” before uploading voice clips."]);
      consentBox.focus();
      return;
    }
    for (const file of multiple ? files : files.slice(0, 1)) {
      const check = await checkFile(file, [kind]);
      if (check.error) { problems.push(check.error); continue; }
      const entry = addItem({ name: safeName(file.name), url: URL.createObjectURL(file), file });
      const typed = new File([file], file.name, { type: check.type }); // the sniffed type, not the browser's guess
      uploadFile(typed, { name: entry.name, consent: consentBox?.checked,
        onProgress: (f) => { entry.bar.value = f; } })
        .then((u) => { finish(entry, "done", uploadFacts(u), u.key); library = [u, ...library]; })
        .catch((e) => {
          finish(entry, "failed", "not uploaded");
          showError([...errors.textContent ? [errors.textContent] : [], uploadError(file, e)]);
        })
        .finally(changed);
    }
    showError(problems);
  }

  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = ""; // the same file can be chosen again after a removal
  });
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    addFiles([...ev.dataTransfer.files]);
  });
  existing.addEventListener("change", () => {
    const u = library.find((x) => x.key === existing.value);
    existing.value = "";
    if (!u || keysOf().includes(u.key)) return;
    addItem({ key: u.key, name: u.name, url: u.url, upload: u });
    changed();
  });

  function setKeys(list_) {
    entries.splice(0).forEach((e) => e.li.remove());
    for (const key of list_ || []) {
      const u = library.find((x) => x.key === key);
      addItem({ key, name: u?.name || key.split("/").pop(), url: u?.url, upload: u });
    }
  }

  // earlier uploads of this kind, for the "add one of your uploads" list (and previews of keys);
  // read again whenever the picker is shown, so uploads made elsewhere since are offered too
  function refresh() {
    return get("/uploads", { query: { kind } }).then((page) => {
      library = page.uploads || [];
      existing.replaceChildren(existing.options[0],
        ...library.map((u) => h("option", { value: u.key, text: `${u.name} (${uploadFacts(u)})` })));
      existing.hidden = !library.length;
      const known = keysOf();
      const unnamed = entries.some((e) => !e.li.querySelector("audio, img") && library.some((u) => u.key === e.key));
      if (unnamed) setKeys(known); // previews for keys that were prefilled
    }).catch(() => { existing.hidden = true; });
  }
  existing.hidden = true;
  refresh();

  setKeys(keys);
  return {
    element, input, keys: keysOf, setKeys, refresh,
    busy: () => entries.some((e) => e.state === "uploading"),
  };
}
