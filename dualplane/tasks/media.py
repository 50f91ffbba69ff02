"""``mux_media`` (control plane): put an audio track under a video with ffmpeg.

ffmpeg comes from the ``imageio-ffmpeg`` wheel (a static binary), so nothing is installed
by hand and the control plane still never imports torch.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY

#: ffmpeg is killed if one mux takes longer than this.
FFMPEG_TIMEOUT_S = 600


class MuxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio: ObjectKey = Field(..., description="Object key of the audio artifact (e.g. a generate_music output).")
    video: ObjectKey = Field(..., description="Object key of the video artifact (e.g. a render_video output).")
    name: str = Field("final.mp4", pattern=r"^[A-Za-z0-9_.-]+\.mp4$", description="Name of the muxed artifact.")
    loop_video: bool = Field(True, description="Repeat the video to cover the whole audio track.")


@task("mux_media", plane="control", params=MuxParams, retry=NO_RETRY)
def mux_media(ctx: TaskContext, p: MuxParams) -> dict[str, Any]:
    """Combine an audio and a video artifact into one MP4 (H.264 video copied, AAC audio)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="dp-mux-") as tmp:
        audio = Path(tmp, "audio" + Path(p.audio).suffix)
        video = Path(tmp, "video" + Path(p.video).suffix)
        audio.write_bytes(ctx.get_artifact(p.audio))
        video.write_bytes(ctx.get_artifact(p.video))
        ctx.progress(0.3)
        out = Path(tmp, p.name)
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        # -shortest does not cut a stream-copied, endlessly looped video: cut at the track's length
        audio_s = probe_duration_s(ffmpeg, audio)
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y"]
        command += ["-stream_loop", "-1"] if p.loop_video else []
        command += ["-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                    "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart"]
        command += ["-t", f"{audio_s:.3f}"] if p.loop_video else ["-shortest"]
        command += [str(out)]
        done = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        ctx.progress(0.9)
        duration_s = probe_duration_s(ffmpeg, out)
        ref = ctx.put_artifact(p.name, out.read_bytes(), "video/mp4")
    return {"video": ref["key"], "size": ref["size"], "duration_s": round(duration_s, 3)}


def probe_duration_s(ffmpeg: str, path: Path) -> float:
    """A media file's duration, from ffmpeg's own description of it (no ffprobe in the wheel)."""
    done = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", done.stderr)
    if not match:
        raise ValueError(f"cannot read the duration of {path.name}: {done.stderr[-300:]}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
