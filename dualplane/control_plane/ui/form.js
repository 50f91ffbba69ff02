// Option forms generated from a task's params JSON Schema (pydantic's output: properties with
// type / anyOf-null / enum / default / minimum / maximum / description / items / format).
// Widgets follow the schema: a slider beside the number for a bounded number, a "random"
// button for a seed, an upload picker for a list of object keys that are clips or images,
// and everything but the main options inside a collapsed "Advanced options".

import { h as el } from "./dom.js";
import { uploadPicker } from "./uploads.js";

let uid = 0;

/** The property's own schema with a `T | None` union unwrapped (nullable: true). */
export function resolve(prop) {
  if (Array.isArray(prop.anyOf)) {
    const branches = prop.anyOf.filter((b) => b.type !== "null");
    const nullable = branches.length < prop.anyOf.length;
    if (branches.length === 1) {
      const { anyOf, ...outer } = prop;
      return { ...branches[0], ...outer, nullable };
    }
    return { ...prop, type: "json", nullable };
  }
  if (prop.enum && !prop.type) return { ...prop, type: "string" };
  return { ...prop, nullable: false };
}

/** The upload kind of a list of object keys (train_voice's clips, train_lora's images), if any. */
export function uploadKindOf(name, p) {
  if (p.type !== "array" || !/^object-key/.test(p.items?.format || "")) return null;
  if (/clip|audio|voice|recording/i.test(name)) return "audio";
  if (/image|photo|picture/i.test(name)) return "image";
  return null;
}

function kindOf(name, p) {
  if (uploadKindOf(name, p)) return "uploads";
  if (p.enum) return "enum";
  if (p.type === "boolean") return "boolean";
  if (p.type === "integer" || p.type === "number") return "number";
  if (p.type === "array" && (p.items?.type === "string" || !p.items)) return "lines";
  if (p.type === "string") return "string";
  return "json";
}

const LONG_TEXT = /^(prompt|text|narrative|lyrics|negative_prompt|intent)$/;

// The options a person sets for most runs; the rest of a longer form is "Advanced options".
const MAIN = /^(prompt|text|narrative|lyrics|instance_prompt|message|duration_s|seconds|steps|num_frames|style|mode|title|seed|clips|images|voice|lora|audio|video|bed|transcripts)$/;
const ALWAYS_OPEN = 4; // a form this short has nothing to hide

// A slider is for a range a hand can pick from; a seed or a 1..100000 step count is typed.
const SLIDER_SPAN = 10000;

// field names carry their unit as a suffix (duration_s, duck_db): labels say it as a person would
const UNITS = { s: "seconds", db: "dB", lufs: "LUFS", hz: "Hz", bpm: "bpm", fps: "fps", mb: "MB", ms: "ms",
  px: "px" };
const WORDS = { lora: "LoRA", fps: "FPS", bpm: "BPM", id: "ID", url: "URL", minlenratio: "minimum length ratio",
  maxlenratio: "maximum length ratio", num: "number of", vtt: "WebVTT", mp4: "MP4", wav: "WAV", lr: "learning rate",
  cfg: "guidance" };

export function humanLabel(name) {
  const parts = name.split("_").filter(Boolean);
  const unit = parts.length > 1 && UNITS[parts.at(-1)] ? UNITS[parts.pop()] : "";
  const words = parts.map((w) => WORDS[w] ?? w).join(" ");
  const text = words.charAt(0).toUpperCase() + words.slice(1);
  return unit ? `${text} (${unit})` : text;
}

// Past this, a bound is an implementation limit (2**63 - 1 for a seed), not advice for a person.
const HUMAN_BOUND = 1e9;

function limitsText(p) {
  const parts = [];
  const lo = p.minimum ?? p.exclusiveMinimum;
  const rawHi = p.maximum ?? p.exclusiveMaximum;
  const hi = rawHi !== undefined && Math.abs(rawHi) >= HUMAN_BOUND ? undefined : rawHi;
  if (lo !== undefined || hi !== undefined) {
    const left = lo === undefined ? "" : `${p.exclusiveMinimum !== undefined ? ">" : "≥"} ${lo}`;
    const right = hi === undefined ? "" : `${p.exclusiveMaximum !== undefined ? "<" : "≤"} ${hi}`;
    parts.push([left, right].filter(Boolean).join(", "));
  }
  if (p.multipleOf) parts.push(`multiple of ${p.multipleOf}`);
  if (p.minItems) parts.push(`at least ${p.minItems}`);
  if (p.maxLength && p.maxLength < 100000) parts.push(`up to ${p.maxLength} characters`);
  if (p.default !== undefined && p.default !== null && typeof p.default !== "object") {
    parts.push(`default ${p.default}`);
  }
  return parts.join("; ");
}

/** A slider step of about a hundredth of the range, rounded to 1, 2 or 5 of a power of ten. */
function niceStep(span) {
  const raw = span / 100;
  const pow = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * pow).find((x) => x >= raw);
}

function clearField(f) {
  if (!f) return;
  f.error.hidden = true;
  f.error.textContent = "";
  f.input.removeAttribute("aria-invalid");
  f.wrap.classList.remove("invalid");
}

function isModelField(name, p) {
  return p.type === "string" && /registry name/i.test(p.description || "");
}

/**
 * Build the form for one task inside `container`. `values` pre-fills fields (saved
 * preferences); `models` is the registry [{name, kind}] for model-like fields.
 * Returns {read() -> {params, errors}, showErrors(list) -> leftovers, clearErrors()}.
 */
export function buildForm(container, schema, { values = {}, models = [], prefix = "p" } = {}) {
  container.replaceChildren();
  const props = schema?.properties || {};
  const required = new Set(schema?.required || []);
  const fields = new Map();
  const formId = ++uid;
  const names = Object.keys(props);
  const main = (name) => names.length <= ALWAYS_OPEN || required.has(name) || MAIN.test(name);
  const advancedBox = el("details", { class: "advanced" }, el("summary", { text: "Advanced options" }));
  const advanced = el("div", { class: "params" });
  advancedBox.append(advanced);

  for (const [name, raw] of Object.entries(props)) {
    const p = resolve(raw);
    const kind = kindOf(name, p);
    const id = `${prefix}${formId}-${name}`;
    const helpId = `${id}-help`;
    const errId = `${id}-error`;
    const isRequired = required.has(name);
    const value = name in values ? values[name] : p.default;
    const describedBy = `${helpId} ${errId}`;
    let input, extra = null, picker = null;

    if (kind === "enum" || (isModelField(name, p) && models.length)) {
      const options = kind === "enum" ? p.enum.slice() : models.map((m) => m.name);
      if (kind !== "enum" && value && !options.includes(value)) options.unshift(value);
      input = el("select", { id, name, "aria-describedby": describedBy, required: isRequired });
      if (p.nullable || (kind === "enum" && !isRequired && p.default === undefined)) {
        input.append(el("option", { value: "", text: "—" }));
      }
      for (const option of options) {
        const kindLabel = kind === "enum" ? "" : models.find((m) => m.name === option)?.kind;
        input.append(el("option", { value: option, text: kindLabel ? `${option} (${kindLabel})` : option }));
      }
      input.value = value ?? "";
    } else if (kind === "boolean") {
      input = el("input", { id, name, type: "checkbox", "aria-describedby": describedBy });
      input.checked = Boolean(value);
    } else if (kind === "number") {
      const step = p.multipleOf ?? (p.type === "integer" ? 1 : "any");
      const lo = p.minimum ?? p.exclusiveMinimum;
      const rawHi = p.maximum ?? p.exclusiveMaximum;
      const hi = rawHi !== undefined && Math.abs(rawHi) >= HUMAN_BOUND ? undefined : rawHi;
      input = el("input", {
        id, name, type: "number", step, inputmode: p.type === "integer" ? "numeric" : "decimal",
        min: lo, max: hi, placeholder: name === "seed" ? "random" : undefined,
        required: isRequired, "aria-describedby": describedBy,
      });
      input.value = value === undefined || value === null ? "" : String(value);
      if (name === "seed") {
        const top = Math.min(hi ?? 2 ** 32 - 1, 2 ** 32 - 1);
        extra = el("button", { type: "button", class: "seed-random", text: "Random",
          "aria-label": "Pick a random seed" });
        extra.addEventListener("click", () => {
          input.value = String((lo || 0) + Math.floor(Math.random() * (top - (lo || 0) + 1)));
          input.dispatchEvent(new Event("input", { bubbles: true }));
        });
      } else if (lo !== undefined && hi !== undefined && hi - lo <= SLIDER_SPAN) {
        // the slider moves the number; the number (typed) moves the slider: one value, two ways
        const span = hi - lo;
        const rangeStep = p.multipleOf ?? (p.type === "integer" ? 1 : niceStep(span));
        const rangeMin = p.exclusiveMinimum !== undefined ? lo + rangeStep : lo;
        extra = el("input", { type: "range", id: `${id}-range`, min: rangeMin, max: hi, step: rangeStep,
          "aria-labelledby": `${id}-label`, "aria-describedby": helpId, tabindex: "-1", class: "slider" });
        extra.value = input.value === "" ? String(rangeMin) : input.value;
        extra.addEventListener("input", () => {
          input.value = extra.value;
          input.dispatchEvent(new Event("input", { bubbles: true }));
        });
        input.addEventListener("input", () => { if (input.value !== "") extra.value = input.value; });
      }
    } else if (kind === "uploads") {
      picker = uploadPicker({ id, kind: uploadKindOf(name, p), keys: Array.isArray(value) ? value : [],
        consent: uploadKindOf(name, p) === "audio", describedBy, onChange: () => clearField(fields.get(name)) });
      input = picker.input;
    } else if (kind === "lines") {
      input = el("textarea", { id, name, rows: 3, spellcheck: "false", required: isRequired,
        "aria-describedby": describedBy });
      input.value = Array.isArray(value) ? value.join("\n") : "";
    } else if (kind === "string") {
      const long = LONG_TEXT.test(name) || (p.maxLength || 0) > 4000;
      input = el(long ? "textarea" : "input", { id, name, rows: long ? 3 : undefined,
        maxlength: p.maxLength && p.maxLength <= 100000 ? p.maxLength : undefined,
        required: isRequired, "aria-describedby": describedBy });
      input.value = value ?? "";
    } else {
      input = el("textarea", { id, name, rows: 3, spellcheck: "false", class: "mono",
        "aria-describedby": describedBy });
      input.value = value === undefined || value === null ? "" : JSON.stringify(value, null, 1);
    }

    // pydantic's automatic title ("Duration S") is the name; a title written in the schema wins
    const auto = name.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
    const title = p.title && p.title !== auto ? p.title : humanLabel(name);
    const label = el("label", { for: id, id: `${id}-label` }, title);
    if (isRequired) label.append(el("span", { class: "req", text: " (required)" }));
    const helpText = [p.description, limitsText(p), kind === "lines" ? "one per line" : "",
      kind === "uploads" ? "upload files or pick earlier uploads" : "",
      kind === "json" ? "JSON" : ""].filter(Boolean).join(" — ");
    const help = el("p", { id: helpId, class: "help", text: helpText });
    const error = el("p", { id: errId, class: "field-error", role: "alert", hidden: true });
    const wrap = el("div", { class: `field field-${kind}`, "data-field": name });
    if (kind === "boolean") wrap.append(el("div", { class: "check" }, input, label), help, error);
    else if (picker) wrap.append(label, picker.element, help, error);
    else if (extra) wrap.append(label, el("div", { class: "with-extra" }, input, extra), help, error);
    else wrap.append(label, input, help, error);
    (main(name) ? container : advanced).append(wrap);
    const entry = { p, kind, input, error, wrap, picker, required: isRequired };
    input.addEventListener("input", () => clearField(entry)); // an edited value's old error goes
    fields.set(name, entry);
  }
  if (advanced.children.length) container.append(advancedBox);
  if (!fields.size) container.append(el("p", { class: "muted", text: "This generator has no options." }));

  function read() {
    const params = {};
    const errors = [];
    for (const [name, f] of fields) {
      const { input, kind, p } = f;
      if (kind === "boolean") { params[name] = input.checked; continue; }
      if (kind === "uploads") {
        const keys = f.picker.keys();
        if (f.picker.busy()) errors.push({ field: name, message: "wait for the uploads to finish" });
        else if (keys.length) params[name] = keys;
        else if (f.required) errors.push({ field: name, message: "add at least one file" });
        continue;
      }
      const text = input.value;
      if (kind === "number") {
        if (text.trim() === "") {
          if (input.validity?.badInput) errors.push({ field: name, message: "not a number" });
          continue;
        }
        const n = Number(text);
        if (!Number.isFinite(n)) { errors.push({ field: name, message: "not a number" }); continue; }
        params[name] = n;
      } else if (kind === "lines") {
        const lines = text.split("\n").map((s) => s.trim()).filter(Boolean);
        if (lines.length || f.required) params[name] = lines;
      } else if (kind === "json") {
        if (text.trim() === "") continue;
        try { params[name] = JSON.parse(text); } catch (e) { errors.push({ field: name, message: `invalid JSON: ${e.message}` }); }
      } else {
        if (text === "" && (p.nullable || !f.required)) continue;
        params[name] = text;
      }
    }
    return { params, errors };
  }

  function clearErrors() {
    for (const f of fields.values()) clearField(f);
  }

  /** Show each {field, message} next to its input; returns those with no input here. */
  function showErrors(list) {
    const leftovers = [];
    let first = null;
    for (const item of list) {
      const key = String(item.field ?? "").split(".")[0];
      const f = fields.get(key);
      if (!f) { leftovers.push(item); continue; }
      f.error.hidden = false;
      f.error.textContent = f.error.textContent ? `${f.error.textContent}; ${item.message}` : item.message;
      f.input.setAttribute("aria-invalid", "true");
      f.wrap.classList.add("invalid");
      first = first || f.input;
    }
    if (first) {
      const box = first.closest("details");
      if (box) box.open = true; // an error inside "Advanced options" must be seen
      first.focus();
    }
    return leftovers;
  }

  return { read, showErrors, clearErrors, fields };
}
