// The song plan as text: title, key, tempo, then each section with its lyrics (plan_song's
// output on the job page; the dry run's `song` in the planner preview).

import { h } from "./dom.js";
import { fmtDuration } from "./format.js";

export function songPlan(song, { headingLevel = 3 } = {}) {
  const facts = [song.key, song.bpm ? `${song.bpm} bpm` : "", song.genre, song.duration_s ? fmtDuration(song.duration_s) : ""]
    .filter(Boolean).join(" · ");
  const sections = (song.sections || []).map((s) => h("li", { class: "song-section", "data-section": s.name },
    h("span", { class: "section-name", text: `${s.name}` }),
    h("span", { class: "muted", text: ` ${fmtDuration(s.start_s)}${s.chords?.length ? ` · ${s.chords.join(" ")}` : ""}` }),
    s.lyrics ? h("p", { class: "lyrics", text: s.lyrics }) : h("p", { class: "muted lyrics", text: "instrumental" })));
  return h("article", { class: "song", "aria-label": `Song plan: ${song.title}` },
    h(`h${headingLevel}`, { class: "song-title", text: song.title || "Untitled song" }),
    h("p", { class: "song-facts muted", text: facts }),
    h("ol", { class: "song-sections" }, sections));
}
