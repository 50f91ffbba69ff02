"""MIDI → audio with the FluidSynth command line and a General MIDI SoundFont.

FluidSynth renders as fast as the CPU allows (``-F``, no audio driver) into raw float32 so
the level is set here, once, without a 16-bit rounding (and dither) in between; with the same
MIDI file and SoundFont the samples are the same on every run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Where Debian's SoundFont packages install (fluid-soundfont-gm, timgm6mb-soundfont, ...):
#: a SoundFont param must name a file inside one of them, never an arbitrary worker path.
SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/sounds/sf3"), Path("/usr/share/soundfonts"))
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
#: Master gain of the synth; the mix is normalised afterwards, this only keeps voices from clipping inside.
GAIN = 0.6
#: Peak level of the normalised mix (-1 dBFS).
PEAK = 0.89
#: FluidSynth is killed past this many seconds (a 10-minute track renders in well under a minute).
RENDER_TIMEOUT_S = 600
#: How often a running render looks at cancellation and reports progress.
POLL_S = 0.25


def resolve_soundfont(name: str | None) -> Path:
    """The SoundFont file to use: the Debian GM default, or ``name`` inside :data:`SOUNDFONT_DIRS`."""
    if name is None:
        path = DEFAULT_SOUNDFONT
    else:
        candidate = Path(name)
        path = candidate if candidate.is_absolute() else SOUNDFONT_DIRS[0] / candidate
        path = path.resolve()
        if not any(path.is_relative_to(d.resolve()) for d in SOUNDFONT_DIRS) or path.suffix.lower() not in (
                ".sf2", ".sf3"):
            raise ValueError(f"soundfont {name!r}: name a .sf2/.sf3 file in "
                             f"{', '.join(str(d) for d in SOUNDFONT_DIRS)}")
    if not path.is_file():
        raise FileNotFoundError(f"SoundFont {path} is not installed on this worker "
                                f"(apt-get install fluid-soundfont-gm, or pass another soundfont)")
    return path


def fluidsynth_exe() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise FileNotFoundError("fluidsynth is not installed on this worker (apt-get install fluidsynth)")
    return exe


def render(midi: bytes, soundfont: Path, sample_rate: int, *, expected_s: float,
           check_cancelled: Callable[[], None], progress: Callable[[float], None]) -> Any:
    """Stereo float32 samples shaped (2, n) of ``midi`` played with ``soundfont``.

    ``progress`` gets the rendered fraction of ``expected_s`` (read from the growing output);
    ``check_cancelled`` raising stops FluidSynth and propagates."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="dp-fluid-") as tmp:
        src, out = Path(tmp, "in.mid"), Path(tmp, "out.raw")
        src.write_bytes(midi)
        command = [fluidsynth_exe(), "-n", "-i", "-q", "-g", str(GAIN), "-r", str(sample_rate), "-T", "raw",
                   "-O", "float", "-E", "little", "-F", str(out), str(soundfont), str(src)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    check_cancelled()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"fluidsynth took over {RENDER_TIMEOUT_S} s") from None
                    if out.exists():
                        progress(min(1.0, out.stat().st_size / (8 * sample_rate * expected_s)))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {stderr[-800:]}")
        frames = np.fromfile(out, dtype="<f4")
    return frames[: frames.size // 2 * 2].reshape(-1, 2).T.copy()


def finish(samples: Any, sample_rate: int, duration_s: float, *, fade_s: float) -> Any:
    """Exactly ``duration_s`` of ``samples`` (cut or padded with silence), peak-normalised,
    with a raised-cosine fade over the last ``fade_s`` seconds."""
    import numpy as np

    n = round(duration_s * sample_rate)
    out = np.zeros((samples.shape[0], n), dtype=np.float32)
    take = min(n, samples.shape[1])
    out[:, :take] = samples[:, :take]
    peak = float(np.abs(out).max())
    if peak > 0:
        out *= PEAK / peak
    fade = min(n, round(fade_s * sample_rate))
    if fade:
        out[:, n - fade:] *= (0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, fade, dtype=np.float32)))
    return out


__all__ = ["DEFAULT_SOUNDFONT", "SOUNDFONT_DIRS", "finish", "fluidsynth_exe", "render", "resolve_soundfont"]
