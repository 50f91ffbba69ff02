"""Audio artifacts every media task writes the same way: a WAV (lossless, what later nodes read)
plus an Opus copy a person can download and play anywhere, and the facts a client needs in the
node's output (duration, rate, channels, formats).

ffmpeg is the static binary of the ``imageio-ffmpeg`` wheel (it has libopus, libmp3lame, libx264,
loudnorm and libass), so nothing is installed by hand and the control plane never imports torch.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dualplane.common.context import TaskContext

#: ffmpeg is killed if one call takes longer than this.
FFMPEG_TIMEOUT_S = 600
#: Bit rate of the Opus copy (transparent for music at 48 kHz stereo).
OPUS_BITRATE = "128k"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], *, timeout_s: float = FFMPEG_TIMEOUT_S) -> str:
    """Run ffmpeg with ``args`` (after the binary); its stderr on success, RuntimeError on failure."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args]
    done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {stderr[-800:]}")
    return stderr


def probe_duration_s(path: Path) -> float:
    """A media file's duration, from ffmpeg's own description of it (no ffprobe in the wheel)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", done.stderr)
    if not match:
        raise ValueError(f"cannot read the duration of {path.name}: {done.stderr[-300:]}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def opus_bytes(wav: bytes, *, bitrate: str = OPUS_BITRATE) -> bytes:
    """An Ogg Opus encoding of a WAV (resampled to 48 kHz, Opus' native rate)."""
    with tempfile.TemporaryDirectory(prefix="dp-opus-") as tmp:
        src, out = Path(tmp, "in.wav"), Path(tmp, "out.opus")
        src.write_bytes(wav)
        run_ffmpeg(["-loglevel", "error", "-i", str(src), "-c:a", "libopus", "-b:a", bitrate, "-ar", "48000",
                    str(out)])
        return out.read_bytes()


def put_audio(ctx: TaskContext, stem: str, wav: bytes, *, sample_rate: int, channels: int,
              duration_s: float) -> dict[str, Any]:
    """Store ``<stem>.wav`` and ``<stem>.opus``; the output fields that describe them.

    ``audio`` is the WAV's key (what downstream ``$ref``s read), ``audio_compressed`` the Opus one.
    """
    compressed = ctx.put_artifact_nowait(f"{stem}.opus", opus_bytes(wav), "audio/ogg")
    ref = ctx.put_artifact(f"{stem}.wav", wav, "audio/wav")
    return {
        "audio": ref["key"],
        "audio_compressed": ctx.wait(compressed)["key"],
        "format": "wav",
        "compressed_format": "opus",
        "sample_rate": int(sample_rate),
        "channels": int(channels),
        "duration_s": round(float(duration_s), 4),
    }


__all__ = ["FFMPEG_TIMEOUT_S", "ffmpeg_exe", "opus_bytes", "probe_duration_s", "put_audio", "run_ffmpeg"]
