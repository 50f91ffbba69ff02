// How numbers read to a person: sizes in KB/MB (decimal, as file managers and players show them),
// durations as m:ss, times in the browser's locale, and "about 40 s left".

export function fmtBytes(n) {
  if (n === undefined || n === null || !Number.isFinite(n)) return "";
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)} KB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} MB`;
  return `${(n / 1e9).toFixed(1)} GB`;
}

/** 75.4 -> "1:15"; 3725 -> "1:02:05". */
export function fmtDuration(seconds) {
  if (seconds === undefined || seconds === null || !Number.isFinite(seconds)) return "";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export function fmtTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

/** A remaining time as a person says it: "about 40 s left", "about 3 min left". */
export function fmtEta(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 1.5) return "almost done";
  if (seconds < 90) return `about ${Math.round(seconds)} s left`;
  if (seconds < 5400) return `about ${Math.round(seconds / 60)} min left`;
  return `about ${(seconds / 3600).toFixed(1)} h left`;
}

/** Seconds with one decimal ("12.0 s"), for what a generator has produced so far. */
export function fmtSeconds(s) {
  return Number.isFinite(s) ? `${s.toFixed(1)} s` : "";
}
