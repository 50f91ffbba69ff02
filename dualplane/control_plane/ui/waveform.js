// A waveform under an <audio> player: the file is decoded with Web Audio (decodeAudioData), its
// peaks drawn on a <canvas>, the played part shaded, and a click (or arrow keys) seeks the player.
// Decoding happens once per URL and only when the waveform scrolls into view: a gallery of
// forty tracks must not download forty files up front.

const BARS = 160;
const peaksCache = new Map(); // url -> Promise<Float32Array of BARS peaks (0..1)>

let audioContext = null;
function context() {
  // an OfflineAudioContext decodes without asking for an output device (no autoplay prompt)
  audioContext ??= new OfflineAudioContext(1, 1, 44100);
  return audioContext;
}

async function peaksOf(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const buffer = await context().decodeAudioData(await response.arrayBuffer());
  const data = buffer.getChannelData(0);
  const per = Math.max(1, Math.floor(data.length / BARS));
  const peaks = new Float32Array(BARS);
  let top = 0;
  for (let b = 0; b < BARS; b++) {
    let max = 0;
    for (let i = b * per, end = Math.min(data.length, (b + 1) * per); i < end; i++) {
      const v = Math.abs(data[i]);
      if (v > max) max = v;
    }
    peaks[b] = max;
    top = Math.max(top, max);
  }
  if (top > 0) for (let b = 0; b < BARS; b++) peaks[b] /= top; // quiet tracks still show a shape
  return peaks;
}

function draw(canvas, peaks, played) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300, height = canvas.clientHeight || 56;
  if (canvas.width !== Math.round(width * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const g = canvas.getContext("2d");
  const style = getComputedStyle(canvas);
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  const bar = width / peaks.length;
  for (let b = 0; b < peaks.length; b++) {
    const amp = Math.max(1, peaks[b] * (height - 4));
    g.fillStyle = b / peaks.length < played ? style.getPropertyValue("--wave-played") : style.getPropertyValue("--wave");
    g.fillRect(b * bar, (height - amp) / 2, Math.max(1, bar - 1), amp);
  }
}

/** A waveform canvas for `audio` (an <audio> element playing `url`). */
export function waveform(audio, url) {
  const canvas = document.createElement("canvas");
  canvas.className = "waveform";
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "slider");
  canvas.setAttribute("aria-label", "Waveform: click or use the arrow keys to seek");
  canvas.setAttribute("aria-valuemin", "0");
  canvas.setAttribute("aria-valuenow", "0");
  canvas.dataset.state = "pending";
  let peaks = null;
  const fraction = () => (audio.duration > 0 ? audio.currentTime / audio.duration : 0);
  const redraw = () => {
    if (!peaks) return;
    draw(canvas, peaks, fraction());
    canvas.setAttribute("aria-valuenow", String(Math.round(audio.currentTime)));
    if (audio.duration > 0) canvas.setAttribute("aria-valuemax", String(Math.round(audio.duration)));
  };
  const seek = (to) => {
    if (!(audio.duration > 0)) return;
    audio.currentTime = Math.max(0, Math.min(audio.duration, to));
    redraw();
  };
  canvas.addEventListener("click", (ev) => {
    const rect = canvas.getBoundingClientRect();
    seek(((ev.clientX - rect.left) / rect.width) * audio.duration);
  });
  canvas.addEventListener("keydown", (ev) => {
    const step = ev.key === "ArrowRight" ? 5 : ev.key === "ArrowLeft" ? -5 : 0;
    if (step) { ev.preventDefault(); seek(audio.currentTime + step); }
  });
  for (const name of ["timeupdate", "seeked", "loadedmetadata"]) audio.addEventListener(name, redraw);
  const start = () => {
    if (!peaksCache.has(url)) peaksCache.set(url, peaksOf(url));
    peaksCache.get(url).then((p) => {
      peaks = p;
      canvas.dataset.state = "drawn";
      redraw();
    }, () => {
      peaksCache.delete(url);
      canvas.dataset.state = "failed";
      canvas.hidden = true; // the player still works; a waveform is a nicety
    });
  };
  const seen = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) { seen.disconnect(); start(); }
  });
  seen.observe(canvas);
  new ResizeObserver(redraw).observe(canvas);
  return canvas;
}
