"""``visualize_audio`` (python plane, CPU): an audio track becomes a visualizer / lyric video.

Every frame is drawn with numpy from the audio under it — the RMS of the frame's own span sets
the brightness, an STFT slice the bars, the samples the waveform — with the title and the current
lyric line drawn by PIL once per line and alpha-blended. Raw RGB frames stream into one ffmpeg
process (libx264, ``superfast``) that muxes the original audio as AAC, so rendering and encoding
overlap on two cores and nothing holds the whole video in memory. Frames are ``rgb0`` (one
uint32 per pixel): filling and masking whole pixels is several times faster than three bytes each.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.tasks import palette as palettes
from dualplane.tasks.audio_files import FFMPEG_TIMEOUT_S, ffmpeg_exe, run_ffmpeg
from dualplane.tasks.lyric_timing import Cue, timed_lines, webvtt

#: Analysis rate: a display needs nothing above 11 kHz, and half of 44.1 kHz halves the FFT work.
ANALYSIS_RATE = 22050
#: STFT window (93 ms at the analysis rate): bass bars resolve, a beat still shows within a frame.
WINDOW = 2048
#: Levels are shown on a dB scale this deep below the track's loudest frame.
FLOOR_DB = 60.0
#: Background brightness at silence: dim, never black, so no frame is blank.
BASE_BRIGHTNESS = 0.35
#: Visual release: a level falls back over this long, so bars do not flicker at frame rate.
RELEASE_S = 0.12
#: Frames are analysed and checked for cancellation in chunks of this many seconds.
CHUNK_S = 2.0
#: The title is shown large for this long at the start (fading out over its last second).
TITLE_S = 4.0
#: Lyric lines fade in and out over this long.
FADE_S = 0.25
MAX_DURATION_S = 3600.0
#: x264 speed/size trade-off. Encoding is most of the CPU a render takes (a 720p particle field:
#: ~80 %); superfast spends ~25 % less than veryfast for ~50 % more bytes at the same CRF.
X264_PRESET = "superfast"


class LyricSection(BaseModel):
    """A song-plan section (``plan_song``'s ``sections``): its lines spread over its span. The plan's
    other section fields (bars, chords) are ignored: a graph wires the sections whole."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field("", max_length=100)
    start_s: float = Field(..., ge=0, le=MAX_DURATION_S)
    duration_s: float = Field(..., gt=0, le=MAX_DURATION_S)
    lyrics: str = Field("", max_length=20_000)


class VisualizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio: ObjectKey = Field(..., description="Object key of the audio (a WAV, e.g. a generate_music output).")
    width: int = Field(1280, ge=128, le=3840, multiple_of=2, description="Frame width (even: H.264 yuv420p).")
    height: int = Field(720, ge=128, le=3840, multiple_of=2, description="Frame height (even).")
    fps: int = Field(30, ge=1, le=60, description="Frames per second.")
    style: Literal["spectrum", "waveform", "particles"] = Field("spectrum", description="What reacts to the audio.")
    palette: str = Field("", max_length=300,
                         description="Style words naming colours (\"rainy night\", \"sunset\", \"forest\").")
    title: str | None = Field(None, max_length=200, description="Shown large at the start and on the poster.")
    lyrics: Annotated[list[LyricSection], Field(max_length=500)] | Annotated[str, Field(max_length=100_000)] | None = (
        Field(None, description="Song-plan sections (lines spread over each section) or plain text "
                                "(lines spread over the whole track)."))
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S,
                                     description="Video length (default: the audio's; longer pads silence).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of the particle layout.")


@task("visualize_audio", plane="python", params=VisualizerParams, kind="video",
      title="Lyric video / audio visualizer")
def visualize_audio(ctx: TaskContext, p: VisualizerParams) -> dict[str, Any]:
    """Render an audio-reactive visualizer / lyric video (H.264 + AAC) for the whole track."""
    from dualplane.tasks.video import png_bytes

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dp-vis-") as tmp:
        audio, out = Path(tmp, "audio.wav"), Path(tmp, "visualizer.mp4")
        audio.write_bytes(ctx.get_artifact(p.audio))
        ctx.progress(0.02)
        done = render(audio, out, p, progress=lambda f: ctx.progress(0.02 + 0.9 * f),
                      check_cancelled=ctx.check_cancelled)
        video = ctx.put_artifact_nowait("visualizer.mp4", out.read_bytes(), "video/mp4")
        poster = ctx.put_artifact("poster.png", png_bytes(done.poster), "image/png")
        subtitles = ctx.put_artifact("lyrics.vtt", webvtt(done.cues).encode(), "text/vtt") if done.cues else None
        video_ref = ctx.wait(video)
    return {
        "video": video_ref["key"], "poster": poster["key"], "subtitles": subtitles and subtitles["key"],
        "size": video_ref["size"], "duration_s": done.duration_s, "width": p.width, "height": p.height,
        "fps": p.fps, "frames": done.frames, "format": "mp4", "codec": "h264", "style": p.style,
        "palette": done.palette, "lines": len(done.cues), "render_s": round(time.monotonic() - started, 3),
    }


@dataclass
class Rendered:
    frames: int
    duration_s: float
    poster: Any  # (h, w, 3) uint8: the loudest frame, with the title
    cues: list[Cue]
    palette: dict[str, Any]


def render(audio: Path, out: Path, p: VisualizerParams, *, progress: Callable[[float], None] = lambda f: None,
           check_cancelled: Callable[[], None] = lambda: None) -> Rendered:
    """Render ``p`` for the audio file into the MP4 ``out`` (the task's core; the bench calls it)."""
    import numpy as np

    samples = _decode(audio, out.parent)
    duration_s = p.duration_s or len(samples) / ANALYSIS_RATE
    n = max(1, round(duration_s * p.fps))
    # past the audio's end the video shows silence, as the encoder's apad plays it
    samples = np.pad(samples, (0, max(0, math.ceil(n * ANALYSIS_RATE / p.fps) - len(samples))))
    colours, words = palettes.pick(p.palette)
    levels, peak_rms = _levels(samples, n, p.fps)
    scene = _Scene(p, colours, samples, peak_rms)
    cues = timed_lines(p.lyrics, n / p.fps)
    text = _Text(p, colours, cues)
    poster_at = int(np.argmax(levels))
    poster = None
    chunk = max(1, round(CHUNK_S * p.fps))
    with _Encoder(out, audio, p.width, p.height, p.fps, n / p.fps) as encoder:
        for first in range(0, n, chunk):
            check_cancelled()
            idx = np.arange(first, min(n, first + chunk))
            for i, frame in zip(idx, scene.frames(idx, levels[idx]), strict=True):
                text.draw(frame, i / p.fps)
                if i == poster_at:
                    poster = text.with_title(frame)
                encoder.write(frame)
            progress(idx[-1] / n)
    return Rendered(frames=n, duration_s=round(n / p.fps, 4), poster=poster, cues=cues,
                    palette=palettes.describe(colours, words))


def _decode(path: Path, tmp: Path) -> Any:
    """Mono float samples at the analysis rate (ffmpeg reads any format and resamples)."""
    import numpy as np

    raw = tmp / "analysis.f32"
    run_ffmpeg(["-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", str(ANALYSIS_RATE), "-f", "f32le", str(raw)])
    return np.fromfile(raw, dtype="<f4")


def _levels(x: Any, n: int, fps: int) -> tuple[Any, float]:
    """Per frame: loudness in [0, 1] (dB below the loudest frame, with a short release), and
    the loudest frame's RMS."""
    import numpy as np

    bounds = np.minimum(np.round(np.arange(n + 1) * ANALYSIS_RATE / fps).astype(np.int64), len(x))
    energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    count = np.maximum(bounds[1:] - bounds[:-1], 1)
    rms = np.sqrt(np.maximum(energy[bounds[1:]] - energy[bounds[:-1]], 0.0) / count)
    peak = max(float(rms.max()), 1e-6)
    level = np.clip(1.0 + 20.0 * np.log10(np.maximum(rms / peak, 1e-9)) / FLOOR_DB, 0.0, 1.0)
    decay = math.exp(-1.0 / (fps * RELEASE_S))
    for i in range(1, n):  # a recurrence: each frame depends on the one before
        level[i] = max(level[i], level[i - 1] * decay)
    return level.astype(np.float32), peak


class _Scene:
    """Background plus the reactive layer of one style, drawn into fresh frames."""

    def __init__(self, p: VisualizerParams, colours: palettes.Palette, samples: Any, peak_rms: float) -> None:
        import numpy as np

        self.p, self.fps = p, p.fps
        w, h = p.width, p.height
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        self.background = np.asarray(colours.top, np.float32) * (1 - t) + np.asarray(colours.bottom, np.float32) * t
        self.low, self.high = np.asarray(colours.low, np.float32), np.asarray(colours.high, np.float32)
        self.rows = np.arange(h)[:, None]
        # padding covers the widest window read around a frame's centre, at both ends
        self.columns_per_px = max(1, math.ceil(WINDOW / w))
        self.pad = WINDOW + w * self.columns_per_px
        self.samples = np.pad(samples, self.pad)
        self.peak_abs = max(float(np.abs(samples).max(initial=0.0)), 1e-6)
        self.hann = np.hanning(WINDOW).astype(np.float32)
        # magnitude of a sine as loud as the loudest frame: bars are dB below it
        self.ref = peak_rms * math.sqrt(2) * float(self.hann.sum()) / 2
        self.draw = {"spectrum": self._spectrum_setup, "waveform": self._waveform_setup,
                     "particles": self._particles_setup}[p.style]()

    def frames(self, idx: Any, levels: Any) -> Any:
        """Yield the frames ``idx`` (uint8 RGB, fresh arrays) with their ``levels``."""
        import numpy as np

        centres = np.round((idx + 0.5) * ANALYSIS_RATE / self.fps).astype(np.int64) + self.pad
        features = self.features(centres)
        for k, level in enumerate(levels):
            shade = BASE_BRIGHTNESS + (1 - BASE_BRIGHTNESS) * float(level)
            frame = np.empty((self.p.height, self.p.width), np.uint32)
            frame[:] = _pack(self.background * shade)[:, None]
            self.draw(frame, features[k], float(level))
            yield frame

    def _ramp(self, t: Any) -> Any:
        """Accent colour for positions ``t`` in [0, 1] (quiet end → loud end)."""
        import numpy as np

        t = np.clip(t, 0.0, 1.0)[..., None]
        return self.low * (1 - t) + self.high * t

    # -- spectrum: log-spaced bars from an STFT slice per frame --------------------------

    def _spectrum_setup(self) -> Callable[[Any, Any, float], None]:
        import numpy as np

        w, h = self.p.width, self.p.height
        wanted = int(np.clip(w // 20, 16, 96))
        edges = np.geomspace(40.0, ANALYSIS_RATE / 2 * 0.9, wanted + 1) * WINDOW / ANALYSIS_RATE
        self.edges = np.unique(np.round(edges).astype(np.int64))  # low bands narrower than a bin merge
        bars = len(self.edges) - 1
        margin = w // 20
        slot = (w - 2 * margin) / bars
        x = np.arange(w) - margin
        band = np.floor(x / slot).astype(np.int64)
        inside = (x >= 0) & (band < bars) & (x - band * slot < slot * 0.72)
        self.band_of_column = np.where(inside, band, bars)  # index ``bars``: a gap, always height 0
        self.baseline, self.max_h = int(h * 0.82), h * 0.62
        self.bar_rows = self._ramp((self.baseline - np.arange(h)) / self.max_h)
        self.features = self._spectra

        def draw(frame: Any, bands: Any, level: float) -> None:
            heights = np.append(bands, 0.0)[self.band_of_column] * self.max_h
            top = self.baseline - heights.astype(np.int64)
            mask = (self.rows >= top[None, :]) & (self.rows < self.baseline)
            np.copyto(frame, _pack(self.bar_rows * (0.55 + 0.45 * level))[:, None], where=mask)

        return draw

    def _spectra(self, centres: Any) -> Any:
        """Band levels in [0, 1] per frame: dB of the band's strongest bin below ``ref``."""
        import numpy as np

        segments = self.samples[centres[:, None] - WINDOW // 2 + np.arange(WINDOW)[None, :]] * self.hann
        magnitude = np.abs(np.fft.rfft(segments, axis=1))[:, : self.edges[-1]]
        bands = np.maximum.reduceat(magnitude, self.edges[:-1], axis=1)
        return np.clip(1.0 + 20.0 * np.log10(np.maximum(bands / self.ref, 1e-9)) / FLOOR_DB, 0.0, 1.0)

    # -- waveform: the samples under the frame, min/max per pixel column ------------------

    def _waveform_setup(self) -> Callable[[Any, Any, float], None]:
        import numpy as np

        w, h = self.p.width, self.p.height
        mid, span = h // 2, h * 0.38
        self.wave_rows = self._ramp(np.abs(np.arange(h) - mid) / span)
        span_samples = w * self.columns_per_px

        def features(centres: Any) -> Any:
            segments = self.samples[centres[:, None] - span_samples // 2 + np.arange(span_samples)[None, :]]
            segments = segments.reshape(len(centres), w, self.columns_per_px)
            return np.stack([segments.min(axis=2), segments.max(axis=2)], axis=1) / self.peak_abs

        self.features = features
        thickness = max(1, h // 240)

        def draw(frame: Any, lows_highs: Any, level: float) -> None:
            low, high = lows_highs
            top = mid - high * span
            bottom = mid - low * span
            # join each column to its neighbour so steep slopes stay a continuous line
            top, bottom = np.minimum(top, np.roll(top, 1)), np.maximum(bottom, np.roll(bottom, 1))
            grow = thickness * (1 + 2 * level)
            mask = (self.rows >= (top - grow)[None, :]) & (self.rows <= (bottom + grow)[None, :])
            np.copyto(frame, _pack(self.wave_rows * (0.5 + 0.5 * level))[:, None], where=mask)

        return draw

    # -- particles: a seeded swarm whose spread, speed, size and glow follow the level ---

    def _particles_setup(self) -> Callable[[Any, Any, float], None]:
        import numpy as np

        w, h = self.p.width, self.p.height
        rng = np.random.default_rng(self.p.seed if self.p.seed is not None else 0)
        count = int(np.clip(w * h // 1500, 150, 3000))
        angle = rng.uniform(0, 2 * math.pi, count)
        radius = np.sqrt(rng.uniform(0.02, 1.0, count))  # uniform over the disc's area
        speed = rng.uniform(0.1, 0.6, count) * rng.choice([-1.0, 1.0], count)
        colours = self._ramp(rng.uniform(0, 1, count))
        biggest = max(2, h // 80)
        self.features = lambda centres: np.zeros(len(centres))

        def draw(frame: Any, _unused: Any, level: float) -> None:
            nonlocal angle
            angle = angle + speed * (0.2 + level) / self.fps  # phase accumulates: no jump when the level does
            spread = radius * (0.35 + 0.65 * level)
            x = (w / 2 + np.cos(angle) * spread * w * 0.48).astype(np.int64)
            y = (h / 2 + np.sin(angle) * spread * h * 0.48).astype(np.int64)
            size = 1 + int(level * (biggest - 1))
            offsets = np.arange(size)
            xs = np.clip(x[:, None, None] + offsets[None, None, :], 0, w - 1)
            ys = np.clip(y[:, None, None] + offsets[None, :, None], 0, h - 1)
            lit = _pack(colours * (0.45 + 0.55 * level))
            frame.reshape(-1)[(ys * w + xs).ravel()] = np.repeat(lit, size * size)

        return draw


class _Text:
    """Title and lyric lines: each rendered once to an alpha mask, blended where shown."""

    def __init__(self, p: VisualizerParams, colours: palettes.Palette, cues: list[Cue]) -> None:
        self.p, self.colour, self.cues = p, colours.text, cues
        self.title = _sprite(p.title, p.height // 9, p.width * 0.9) if p.title else None
        self.line: tuple[int, Any] | None = None  # (cue index, sprite): lines come in order
        self.next_cue = 0

    def draw(self, frame: Any, t: float) -> None:
        if self.title is not None and t < TITLE_S:
            _blend_centred(frame, self.title, self.p.height * 0.3, self.colour, min(1.0, TITLE_S - t))
        while self.next_cue < len(self.cues) and self.cues[self.next_cue].end_s <= t:
            self.next_cue += 1
        if self.next_cue < len(self.cues) and self.cues[self.next_cue].start_s <= t:
            cue = self.cues[self.next_cue]
            if self.line is None or self.line[0] != self.next_cue:
                self.line = (self.next_cue, _sprite(cue.text, self.p.height // 16, self.p.width * 0.92))
            fade = min(1.0, (t - cue.start_s) / FADE_S, (cue.end_s - t) / FADE_S)
            _blend_centred(frame, self.line[1], self.p.height * 0.89, self.colour, fade)

    def with_title(self, frame: Any) -> Any:
        """An RGB copy of ``frame`` with the title fully shown (the poster names the video)."""
        poster = _rgb(frame)[..., :3].copy()
        if self.title is not None:
            _blend_centred(poster, self.title, self.p.height * 0.3, self.colour, 1.0)
        return poster


def _pack(colours: Any) -> Any:
    """uint32 ``rgb0`` pixels of float RGB colours ``(..., 3)`` (clipped to 0..255)."""
    import numpy as np

    c = np.clip(colours, 0, 255).astype(np.uint8)
    out = np.zeros((*c.shape[:-1], 4), np.uint8)
    out[..., :3] = c
    return out.view(np.uint32)[..., 0]


def _rgb(frame: Any) -> Any:
    """The ``(h, w, 4)`` byte view of an ``rgb0`` frame (writes go through to the frame)."""
    import numpy as np

    return frame.view(np.uint8).reshape(*frame.shape, 4)


def _font(size: int) -> Any:
    from PIL import ImageFont

    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "LiberationSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)  # no system fonts: Pillow's own scalable one


def _sprite(text: str, size: int, max_width: float) -> Any:
    """Alpha mask (float32 in [0, 1]) of ``text``, shrunk to fit ``max_width``."""
    import numpy as np
    from PIL import Image, ImageDraw

    font = _font(size)
    width = font.getlength(text)
    if width > max_width:
        font = _font(max(8, int(size * max_width / width)))
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size // 12)
    image = Image.new("L", (max(1, right - left + 2 * pad), max(1, bottom - top + 2 * pad)))
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def _blend_centred(frame: Any, alpha: Any, centre_y: float, colour: tuple[int, int, int], opacity: float) -> None:
    """Blend a drop shadow then ``colour`` through ``alpha``, centred at row ``centre_y``."""
    if opacity <= 0:
        return
    h, w = alpha.shape
    pixels = _rgb(frame)[..., :3] if frame.ndim == 2 else frame
    x, y = (pixels.shape[1] - w) // 2, int(centre_y - h / 2)
    shadow = max(1, h // 20)
    _blend(pixels, alpha, x + shadow, y + shadow, (0, 0, 0), 0.6 * opacity)
    _blend(pixels, alpha, x, y, colour, opacity)


def _blend(frame: Any, alpha: Any, x: int, y: int, colour: tuple[int, int, int], opacity: float) -> None:
    import numpy as np

    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(fw, x + alpha.shape[1]), min(fh, y + alpha.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - y: y1 - y, x0 - x: x1 - x, None] * opacity
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = (region + (np.asarray(colour, np.float32) - region) * a).astype(np.uint8)


class _Encoder:
    """One ffmpeg process: raw ``rgb0`` frames on stdin + the audio file → H.264/AAC MP4."""

    def __init__(self, out: Path, audio: Path, width: int, height: int, fps: int, duration_s: float) -> None:
        self.log = out.with_suffix(".log")
        self.args = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb0", "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "pipe:0",
            "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
            "-c:v", "libx264", "-preset", X264_PRESET, "-crf", "23", "-pix_fmt", "yuv420p",
            # apad: a requested length past the audio's end is silence, not a shorter video
            "-af", "apad", "-c:a", "aac", "-b:a", "160k", "-t", f"{duration_s:.6f}",
            "-movflags", "+faststart", str(out),
        ]

    def __enter__(self) -> Self:
        self.stderr = self.log.open("wb")  # a file, not a pipe: a full pipe would stall ffmpeg mid-encode
        self.process = subprocess.Popen(self.args, stdin=subprocess.PIPE, stderr=self.stderr)
        assert self.process.stdin is not None  # stdin=PIPE
        self.stdin = self.process.stdin
        return self

    def write(self, frame: Any) -> None:
        try:
            self.stdin.write(memoryview(frame).cast("B"))
        except BrokenPipeError:
            self.process.wait(timeout=FFMPEG_TIMEOUT_S)
            raise RuntimeError(
                f"ffmpeg stopped reading frames: {self.log.read_text(errors='replace')[-800:]}") from None

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        try:
            if kind is not None:
                self.process.kill()  # cancelled or failed: do not finish a video nobody keeps
                self.process.wait(timeout=FFMPEG_TIMEOUT_S)
                return
            self.stdin.close()
            code = self.process.wait(timeout=FFMPEG_TIMEOUT_S)
            if code != 0:
                raise RuntimeError(f"ffmpeg failed ({code}): {self.log.read_text(errors='replace')[-800:]}")
        finally:
            self.stderr.close()


__all__ = ["LyricSection", "Rendered", "VisualizerParams", "render", "visualize_audio"]
