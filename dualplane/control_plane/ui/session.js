// What every view shares once signed in: the task catalog, the model registry, the user's
// preferences, and the live connection.

import { Live } from "./api.js";

export const session = {
  tasks: [],
  byName: new Map(),
  models: [],
  prefs: {},
  booted: false,
};

export const live = new Live({
  onState: (s) => {
    const badge = document.querySelector("#live-state");
    badge.hidden = s === "off";
    badge.textContent = s === "live" ? "● live" : s === "connecting" ? "○ connecting" : "○ reconnecting";
    badge.dataset.state = s;
  },
});

/** A task's human title ("Generate music from a prompt (MusicGen)"), else its name. */
export function taskTitle(name) {
  const t = session.byName.get(name);
  return t?.title && t.title !== t.name ? t.title : name;
}
