"""``mux_media`` and ``mix_audio`` (control plane): tracks under a video, voices over a bed, with
ffmpeg only.

ffmpeg comes from the ``imageio-ffmpeg`` wheel (a static binary), so nothing is installed by hand
and the control plane never imports numpy or torch. The mixing itself (ducking, EBU R128
loudness) lives in :mod:`dualplane.tasks.mixing`; both tasks go through it.

The muxed video always lasts exactly as long as the audio: a longer video is cut, a shorter one
is looped or held on its last frame (``fit_video``), to the frame. That takes a re-encode (H.264,
``veryfast``): a stream copy can only cut at packets, and B-frames then leave frames past the cut.
The same single encode burns subtitles and replaces a blank first frame.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY
from dualplane.tasks import mixing
from dualplane.tasks.audio_files import probe_duration_s, put_audio, run_ffmpeg

#: A frame whose mean luma (0..255) is below this is blank (black, or a fade from black).
BLANK_LUMA = 24
#: How far into the video the first non-blank frame is looked for.
SCAN_S = 10.0
#: Frames are scanned for blankness at this size (a mean needs no detail).
SCAN_SIZE = (32, 18)


class MixParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bed: ObjectKey = Field(..., description="Object key of the music bed (e.g. a generate_music output).")
    voice: ObjectKey = Field(..., description="Object key of the narration or vocals.")
    voice_start_s: float = Field(0.0, ge=0, le=3600, description="Where the voice starts on the bed's timeline.")
    duck_db: float = Field(10.0, ge=0, le=30, description="How much quieter the bed is while the voice speaks.")
    loudness_lufs: float | None = Field(-14.0, ge=-40, le=-5,
                                        description="Integrated loudness of the result (EBU R128); null: as mixed.")


class MuxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio: ObjectKey = Field(..., description="Object key of the audio artifact (e.g. a generate_music output).")
    video: ObjectKey = Field(..., description="Object key of the video artifact (e.g. a render_video output).")
    name: str = Field("final.mp4", pattern=r"^[A-Za-z0-9_.-]+\.mp4$", description="Name of the muxed artifact.")
    loop_video: bool = Field(True, description="Older spelling of fit_video: true is \"loop\", false \"extend\".")
    fit_video: Literal["loop", "extend", "cut"] | None = Field(
        None, description="A video shorter than the audio is looped (\"loop\") or held on its last frame "
                          "(\"extend\"; \"cut\" too: it only says a longer one is cut, which every mode does). "
                          "Default: from loop_video.")
    voice: ObjectKey | None = Field(None, description="Object key of narration or vocals mixed over the audio.")
    voice_start_s: float = Field(0.0, ge=0, le=3600, description="Where the voice starts on the audio's timeline.")
    duck_db: float = Field(10.0, ge=0, le=30, description="How much quieter the audio is while the voice speaks.")
    loudness_lufs: float | None = Field(-14.0, ge=-40, le=-5,
                                        description="Integrated loudness of the soundtrack (EBU R128); null: as is.")
    subtitles: ObjectKey | None = Field(None, description="Object key of a WebVTT file (e.g. visualize_audio's).")
    burn_subtitles: bool = Field(False, description="Draw the subtitles into the frames (else only passed on).")

    @model_validator(mode="after")
    def _consistent(self) -> MuxParams:
        if self.burn_subtitles and self.subtitles is None:
            raise ValueError("burn_subtitles needs subtitles")
        if self.fit_video == "loop" and not self.loop_video:
            raise ValueError("fit_video 'loop' contradicts loop_video false")
        return self

    @property
    def fit(self) -> str:
        return self.fit_video or ("loop" if self.loop_video else "extend")


@task("mix_audio", plane="control", params=MixParams, retry=NO_RETRY, kind="media",
      title="Mix a voice over music (ducking, loudness)")
def mix_audio(ctx: TaskContext, p: MixParams) -> dict[str, Any]:
    """Mix narration or vocals over a music bed (ducked) at a target loudness."""
    with tempfile.TemporaryDirectory(prefix="dp-mix-") as tmp:
        bed, voice = _fetch(ctx, tmp, "bed", p.bed), _fetch(ctx, tmp, "voice", p.voice)
        ctx.progress(0.2)
        mixed = mixing.mix(bed, Path(tmp, "mix.wav"), voice=voice, voice_start_s=p.voice_start_s,
                           duck_db=p.duck_db, loudness_lufs=p.loudness_lufs)
        ctx.check_cancelled()
        ctx.progress(0.8)
        stored = put_audio(ctx, "mix", mixed.path.read_bytes(), sample_rate=mixing.MIX_RATE,
                           channels=mixing.MIX_CHANNELS, duration_s=mixed.duration_s)
    return {**stored, **_mix_facts(mixed)}


@task("mux_media", plane="control", params=MuxParams, retry=NO_RETRY, kind="media",
      title="Put audio under a video (MP4)")
def mux_media(ctx: TaskContext, p: MuxParams) -> dict[str, Any]:
    """Put an audio track (optionally with a ducked voice over it) under a video, as one MP4."""
    with tempfile.TemporaryDirectory(prefix="dp-mux-") as tmp:
        audio, video = _fetch(ctx, tmp, "audio", p.audio), _fetch(ctx, tmp, "video", p.video)
        voice = _fetch(ctx, tmp, "voice", p.voice) if p.voice else None
        # read even when only passed on: the output must not name a key this job's user may not read
        subtitles = _fetch(ctx, tmp, "subtitles", p.subtitles, suffix=".vtt") if p.subtitles else None
        ctx.progress(0.1)
        mixed = mixing.mix(audio, Path(tmp, "mix.wav"), voice=voice, voice_start_s=p.voice_start_s,
                           duck_db=p.duck_db, loudness_lufs=p.loudness_lufs)
        ctx.check_cancelled()
        ctx.progress(0.4)
        source = probe_video(video)
        lumas = first_lumas(video, Path(tmp))
        shown = next((i for i, luma in enumerate(lumas) if luma >= BLANK_LUMA),
                     max(range(len(lumas)), key=lumas.__getitem__, default=0))
        poster = Path(tmp, "poster.png")
        run_ffmpeg(["-loglevel", "error", "-i", str(video), "-vf", f"select=eq(n\\,{shown})", "-frames:v", "1",
                    str(poster)])
        out = Path(tmp, p.name)
        fit = _mux(video, source, mixed, out, fit=p.fit, subtitles=subtitles if p.burn_subtitles else None,
                   first_frame=poster if shown else None)
        ctx.check_cancelled()
        ctx.progress(0.85)
        made = probe_video(out)
        pending = ctx.put_artifact_nowait("poster.png", poster.read_bytes(), "image/png")
        stored = put_audio(ctx, "mix", mixed.path.read_bytes(), sample_rate=mixing.MIX_RATE,
                           channels=mixing.MIX_CHANNELS, duration_s=mixed.duration_s)
        ref = ctx.put_artifact(p.name, out.read_bytes(), "video/mp4")
        loudness = mixing.measure_lufs(out)
        poster_ref = ctx.wait(pending)
    return {
        "video": ref["key"], "size": ref["size"], "poster": poster_ref["key"], "subtitles": p.subtitles,
        "subtitles_burned": p.burn_subtitles, "duration_s": round(made["duration_s"], 3), "width": made["width"],
        "height": made["height"], "fps": made["fps"], "format": "mp4", "codec": "h264", "fit": fit,
        "first_frame_replaced": bool(shown), "audio": stored["audio"], "audio_compressed": stored["audio_compressed"],
        "audio_format": "wav", "sample_rate": stored["sample_rate"], "channels": stored["channels"],
        **_mix_facts(mixed), "loudness_lufs": round(loudness, 2),
    }


def _fetch(ctx: TaskContext, tmp: str, stem: str, key: str, *, suffix: str | None = None) -> Path:
    path = Path(tmp, stem + (suffix or Path(key).suffix))
    path.write_bytes(ctx.get_artifact(key))
    return path


def _mix_facts(mixed: mixing.Mixed) -> dict[str, Any]:
    return {"loudness_lufs": mixed.loudness_lufs, "normalization": mixed.normalization,
            "ducked_s": round(sum(b - a for a, b in mixed.speech), 3)}


def _mux(video: Path, source: dict[str, Any], mixed: mixing.Mixed, out: Path, *, fit: str,
         subtitles: Path | None, first_frame: Path | None) -> str:
    """Write ``out``: the video fitted to the mix's length, the mix as AAC. Returns what was done
    to the video: "cut", "looped" or "extended"."""
    audio_s = mixed.duration_s
    short = source["duration_s"] < audio_s - 0.5 / source["fps"]
    done = "cut" if not short else ("looped" if fit == "loop" else "extended")
    filters = []
    if done == "extended":
        filters.append(f"tpad=stop_mode=clone:stop_duration={audio_s - source['duration_s'] + 1:.3f}")
    if subtitles is not None:
        filters.append(f"subtitles=filename={subtitles}")
    chain = ",".join([*filters, "format=yuv420p"])
    args = ["-loglevel", "error"] + (["-stream_loop", "-1"] if done == "looped" else [])
    args += ["-i", str(video), "-i", str(mixed.path)]
    if first_frame is None:
        graph = f"[0:v]{chain}[v]"
    else:
        # a blank opening frame is what players show before play: show the first real one instead
        args += ["-i", str(first_frame)]
        graph = f"[0:v][2:v]overlay=enable='eq(n,0)'[o];[o]{chain}[v]"
    # always re-encoded: a stream copy cuts at packets, and B-frames put frames past the cut (92 for 90)
    args += ["-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20"]
    # -t, not -shortest: a looped input never ends, and a held one ends late on purpose
    args += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "192k", "-t", f"{audio_s:.3f}", "-movflags", "+faststart",
             str(out)]
    run_ffmpeg(args)
    return done


def probe_video(path: Path) -> dict[str, Any]:
    """Width, height, frame rate and duration of a file's first video stream (ffmpeg's own
    description of it: there is no ffprobe in the wheel)."""
    done = run_ffmpeg(["-i", str(path), "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"])
    stream = re.search(r"Stream #\d+:\d+.*?: Video: (.*)", done)
    size = stream and re.search(r", (\d{2,5})x(\d{2,5})", stream.group(1))
    rate = stream and re.search(r", ([\d.]+) (?:fps|tbr)", stream.group(1))
    if not (size and rate):
        raise ValueError(f"{path.name} has no video stream ffmpeg can describe: {done[-300:]}")
    return {"width": int(size.group(1)), "height": int(size.group(2)), "fps": round(float(rate.group(1)), 3),
            "duration_s": probe_duration_s(path)}


def first_lumas(video: Path, tmp: Path) -> list[float]:
    """Mean luma (0..255) of each frame in the first :data:`SCAN_S` seconds (tiny grey frames)."""
    raw = tmp / "scan.gray"
    width, height = SCAN_SIZE
    run_ffmpeg(["-loglevel", "error", "-t", str(SCAN_S), "-i", str(video), "-vf",
                f"scale={width}:{height},format=gray", "-f", "rawvideo", str(raw)])
    data, pixels = raw.read_bytes(), width * height
    return [sum(data[i: i + pixels]) / pixels for i in range(0, len(data) - pixels + 1, pixels)]


__all__ = ["MixParams", "MuxParams", "mix_audio", "mux_media", "probe_video"]
