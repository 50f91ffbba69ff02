// Results as a product shows them: audio with a waveform, video with its poster, images, and
// downloads with human sizes and durations. Used by the job page, the gallery and compare.

import { h } from "./dom.js";
import { fmtBytes, fmtDuration } from "./format.js";
import { waveform } from "./waveform.js";

/** The kind of a content type, as the gallery filters them. */
export function kindOf(type = "") {
  if (type === "audio/midi") return "other";
  for (const k of ["audio", "video", "image"]) if (type.startsWith(`${k}/`)) return k;
  if (type.startsWith("text/") || type === "application/json") return "text";
  return "other";
}

/** "0:30 · 1.2 MB": the parts known; a media element fills in a duration it learns later. */
function facts(item, durationSlot) {
  const size = item.size !== undefined && item.size !== null ? fmtBytes(item.size) : "";
  durationSlot.textContent = item.duration_s ? fmtDuration(item.duration_s) : "";
  return h("span", { class: "facts" }, durationSlot, durationSlot.textContent && size ? " · " : "", size);
}

/**
 * One output as a figure: `item` = {url, name, content_type, size, duration_s?, poster_url?,
 * caption?}. `player: false` makes a download-only entry (the WAV twin of an Opus track).
 */
export function mediaFigure(item, { player = true, alt, also = [] } = {}) {
  const type = item.content_type || "";
  const kind = kindOf(type);
  const durationSlot = h("span", { class: "duration" });
  let media = null;
  if (item.url && player && kind === "audio") {
    const audio = h("audio", { controls: true, preload: "metadata", src: item.url,
      "aria-label": `Play ${item.name}` });
    media = h("div", { class: "player" }, audio, waveform(audio, item.url));
    audio.addEventListener("loadedmetadata", () => {
      if (!item.duration_s && Number.isFinite(audio.duration)) durationSlot.textContent = fmtDuration(audio.duration);
    });
  } else if (item.url && player && kind === "video") {
    media = h("video", { controls: true, preload: "metadata", src: item.url, playsinline: true,
      poster: item.poster_url, "aria-label": `Play ${item.name}` });
    media.addEventListener("loadedmetadata", () => {
      if (!item.duration_s && Number.isFinite(media.duration)) durationSlot.textContent = fmtDuration(media.duration);
    });
  } else if (item.url && player && kind === "image") {
    media = h("img", { src: item.url, alt: alt || item.name, loading: "lazy" });
  }
  const download = item.url
    ? h("a", { href: item.url, download: item.name, class: "download", text: `Download ${item.name}` })
    : h("span", { class: "muted", text: "no object store URL" });
  // the other files of the same track (its WAV, its MIDI): downloads under the one player
  const more = also.map((x) => h("a", { href: x.url, download: x.name, class: "download",
    text: `Download ${x.name} (${fmtBytes(x.size)})` }));
  return h("figure", { class: "artifact", "data-key": item.key, "data-type": type, "data-kind": kind }, media,
    h("figcaption", {}, h("strong", { text: item.name }), item.caption ? ` · ${item.caption}` : "", " · ",
      facts(item, durationSlot), " ", download, ...more.map((a) => [" ", a])));
}

const PREFERRED = ["video/", "audio/ogg", "audio/", "image/", ""];
/** Files of one track or clip (same node, same name but the extension) as one entry: the
 * first to show (a video, the Opus of a WAV + Opus pair, ...) and the rest as downloads. */
export function groupTracks(items) {
  const groups = new Map();
  for (const item of items) {
    const key = `${item.job_id || ""}/${item.node_id}/${item.name.replace(/\.[^.]+$/, "")}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(item);
  }
  const rank = (x) => PREFERRED.findIndex((p) => (x.content_type || "").startsWith(p) && x.content_type !== "audio/midi");
  return [...groups.values()].map((list) => {
    const sorted = [...list].sort((a, b) => (rank(a) < 0 ? 9 : rank(a)) - (rank(b) < 0 ? 9 : rank(b)));
    return { main: sorted[0], also: sorted.slice(1) };
  });
}

const stemOf = (a) => `${a.node_id}/${a.name.replace(/\.[^.]+$/, "")}`;

/**
 * A job's artifacts (`GET /jobs/{id}/artifacts`) as figures. A track stored as WAV and Opus gets
 * one player (the Opus, light to stream) and both downloads; a video's poster.png is its poster,
 * not a separate picture. `durations` maps node id -> seconds from the node's output.
 */
export function renderArtifacts(container, artifacts, { durations = {} } = {}) {
  if (!artifacts.length) {
    container.replaceChildren(h("p", { class: "muted", text: "None yet." }));
    return;
  }
  const existing = new Map([...container.querySelectorAll("[data-key]")].map((n) => [n.dataset.key, n]));
  const compressed = new Set(artifacts.filter((a) => a.content_type === "audio/ogg").map(stemOf));
  const posters = new Map(artifacts.filter((a) => a.name === "poster.png").map((a) => [a.node_id, a.url]));
  const hasVideo = new Set(artifacts.filter((a) => kindOf(a.content_type) === "video").map((a) => a.node_id));
  const items = artifacts.map((a) => {
    const keep = existing.get(a.key);
    if (keep) return keep; // a playing player stays as it is
    const type = a.content_type || "";
    const player = type !== "audio/midi" && !(type === "audio/wav" && compressed.has(stemOf(a)))
      && !(a.name === "poster.png" && hasVideo.has(a.node_id));
    const duration = kindOf(type) === "audio" || kindOf(type) === "video" ? durations[a.node_id] : undefined;
    return mediaFigure({ ...a, caption: a.node_id, duration_s: duration,
      poster_url: kindOf(type) === "video" ? posters.get(a.node_id) : undefined },
    { player, alt: `${a.name} from ${a.node_id}` });
  });
  container.replaceChildren(...items);
}
