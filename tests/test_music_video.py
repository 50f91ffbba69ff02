"""The demo job end to end, as `make run` runs it: the demo intent planned by the control plane's
planner (against the live worker's manifest), then run on a real worker — song plan, FluidSynth
arrangement, Piper intro and lyrics, ducked mix, lyric visualizer, mux."""

from __future__ import annotations

import re
import subprocess
import tempfile
import wave
from pathlib import Path

import pytest

from dualplane.cli.demo import DEMO_DURATION_S, DEMO_TEXT
from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job

pytestmark = pytest.mark.ml


def streams_of(mp4: bytes) -> str:
    """ffmpeg's description of a file's streams (it prints them on stderr)."""
    import imageio_ffmpeg

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", f.name],
                               capture_output=True, text=True, check=False)
    return probe.stderr


@pytest.mark.timeout(300)
async def test_the_demo_intent_is_planned_and_made_into_a_music_video_with_its_voice_and_lyrics(
    control_plane: ControlPlane, worker_factory
):
    artifact_store = control_plane.artifacts
    await worker_factory(concurrency=2)
    await control_plane.router.workers(fresh=True)
    plan = await control_plane.planner.plan(DEMO_TEXT)
    tasks = {n["id"]: n["task"] for n in plan.graph["nodes"]}
    assert tasks["music"] == "arrange_music" and tasks["video"] == "visualize_audio"
    assert tasks["narration"] == tasks["vocals"] == "synthesize_voice" and tasks["final"] == "mux_media"
    assert not any(n["kind"] == "unavailable" for n in plan.notes), plan.notes  # the worker offers every task

    job = await wait_for_job(control_plane, (await control_plane.submit(plan.graph)).job_id, timeout_s=280)
    assert job.status == "succeeded", job.model_dump_json()
    assert job.graph.metadata["brief"]["narration"] is not None
    song = node(job, "song").output
    assert song["lyrics_text"] and song["key"] and song["title"]
    music = await artifact_store.get(node(job, "music").output["audio"])
    with wave.open(str(_write(music, ".wav"))) as wav:
        assert abs(wav.getnframes() / wav.getframerate() - DEMO_DURATION_S) < 0.05
    assert node(job, "narration").output["model"] == "piper-joe"
    final_out = node(job, "final").output
    final = await artifact_store.get(final_out["video"])
    streams = streams_of(final)
    assert "Video: h264" in streams and "Audio: aac" in streams and "1280x720" in streams, streams
    duration = re.search(r"Duration: 00:00:(\d+\.\d+)", streams)
    assert duration and abs(float(duration.group(1)) - DEMO_DURATION_S) < 0.2, streams
    assert abs(final_out["loudness_lufs"] - (-14.0)) <= 1.0
    subtitles = (await artifact_store.get(node(job, "video").output["subtitles"])).decode()
    first_line = song["lyrics_text"].splitlines()[0]
    assert subtitles.startswith("WEBVTT") and first_line in subtitles


def _write(data: bytes, suffix: str) -> Path:
    path = Path(tempfile.mkstemp(suffix=suffix)[1])
    path.write_bytes(data)
    return path
