"""The music-video graph of the demo (plan_song → music + video → mux) end to end on tiny models."""

from __future__ import annotations

import re
import subprocess
import tempfile
import wave
from pathlib import Path

import pytest

from dualplane.control_plane import ControlPlane
from dualplane.demo import DEMO_DURATION_S, demo_graph
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


async def test_the_demo_graph_muxes_generated_music_under_the_rendered_video(
    control_plane: ControlPlane, worker_factory, upload_models
):
    store = await upload_models("musicgen-small", "sd15", "animatediff-motion-adapter")
    await worker_factory(concurrency=2)
    job = await wait_for_job(control_plane, (await control_plane.submit(demo_graph())).job_id, timeout_s=180)

    assert job.status == "succeeded", job.model_dump_json()
    song = node(job, "song").output
    assert node(job, "music").params["prompt"] == {"$ref": "song.output.music_prompt"}
    assert song["music_prompt"] and song["video_prompt"] and song["lyrics"]
    music = await store.get(node(job, "music").output["audio"])
    with wave.open(str(_write(music, ".wav"))) as wav:
        assert abs(wav.getnframes() / wav.getframerate() - DEMO_DURATION_S) < 0.1
    final = await store.get(node(job, "final").output["video"])
    streams = streams_of(final)
    assert "Video: h264" in streams and "Audio: aac" in streams, streams
    duration = re.search(r"Duration: 00:00:(\d+\.\d+)", streams)
    assert duration and abs(float(duration.group(1)) - DEMO_DURATION_S) < 0.5, streams  # looped video cut to the track


def _write(data: bytes, suffix: str) -> Path:
    path = Path(tempfile.mkstemp(suffix=suffix)[1])
    path.write_bytes(data)
    return path
