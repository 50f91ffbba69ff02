"""Live previews: a render sends small JPEGs of its latents while it denoises, music the seconds made
so far, and a data event over the size limit is refused. The end-to-end tests run a real worker on
the tiny models, with the real Redis, SeaweedFS and WebSocket hub."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("torch")

from dualplane.cli.output import describe_data
from dualplane.common.context import MAX_DATA_EVENT_BYTES, TaskContext
from dualplane.common.errors import DataEventTooLarge
from dualplane.control_plane import ControlPlane
from dualplane.tasks.latent_preview import (
    JPEG_QUALITIES,
    MAX_PREVIEW_B64,
    PROJECTIONS,
    LatentPreviews,
    jpeg_within,
    latent_rgb,
    preview_size,
)
from tests.helpers import node, wait_for_job
from tests.test_hub import Follower, hub_server
from tests.test_long_media import registry

pytestmark = pytest.mark.ml


@pytest.fixture
def written() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def ctx(written: list[dict[str, Any]]) -> Iterator[TaskContext]:
    """A task's context whose chunks land in ``written`` (what the executor would mirror)."""
    loop = asyncio.new_event_loop()
    yield TaskContext(job_id="j", node_id="video", attempt=1, write=written.append, cancelled=threading.Event(),
                      artifacts=None, loop=loop, logger=logging.getLogger("test_previews"))
    loop.close()


def open_jpeg(b64: str) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


# -- the pieces -----------------------------------------------------------------------------


def test_latent_rgb_projects_sd15_latents_and_stretches_channels_it_has_no_factors_for():
    import numpy as np
    import torch

    latent = torch.zeros(4, 2, 3)
    latent[0, 0, 0] = 1.0
    rgb = latent_rgb(latent)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb[1:] == 128).all()  # a zero latent is mid-grey
    expected = [round((f + 1) / 2 * 255) for f in PROJECTIONS[4].factors[0]]
    assert rgb[0, 0].tolist() == pytest.approx(expected, abs=1)

    noise = torch.randn(16, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    rgb = latent_rgb(noise)
    first = noise[:3].permute(1, 2, 0).numpy()
    stretched = (first - first.min(axis=(0, 1))) / np.ptp(first, axis=(0, 1)) * 255
    assert np.abs(rgb.astype(float) - stretched).max() <= 1.0
    assert rgb.reshape(-1, 3).min(axis=0).tolist() == [0, 0, 0]
    assert rgb.reshape(-1, 3).max(axis=0).tolist() == [255, 255, 255]
    two = latent_rgb(noise[:2])
    assert (two[..., 2] == two[..., 0]).all()  # fewer than 3 channels: the first again


def test_preview_size_keeps_the_aspect_with_the_long_side_at_most_256():
    assert preview_size(64, 48) == (64, 48)
    assert preview_size(512, 512) == (256, 256)
    assert preview_size(1024, 576) == (256, 144)
    assert preview_size(576, 1024) == (144, 256)


def test_a_preview_of_noise_gets_a_lower_quality_or_a_smaller_size_until_it_fits():
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    first = io.BytesIO()
    noise.save(first, format="JPEG", quality=JPEG_QUALITIES[0])
    assert len(base64.b64encode(first.getvalue())) > MAX_PREVIEW_B64  # the first quality does not fit
    data, image = jpeg_within(noise)
    assert len(base64.b64encode(data)) <= MAX_PREVIEW_B64 and image.size == (256, 256)
    assert open_jpeg(base64.b64encode(data).decode()).size == (256, 256)

    data, image = jpeg_within(noise, max_b64=8 * 1024)  # not even the last quality fits: halved
    assert len(base64.b64encode(data)) <= 8 * 1024 and image.width < 256
    assert open_jpeg(base64.b64encode(data).decode()).size == image.size


def test_previews_are_throttled_and_the_first_step_always_has_one(ctx: TaskContext, written: list):
    import torch

    latents = torch.randn(1, 4, 3, 6, 8)
    previews = LatentPreviews(ctx, 30, (32, 24), interval_s=3600)
    for step in range(1, 31):
        previews.step(step, latents)
    assert [w["data"]["preview"]["step"] for w in written] == [1] and previews.sent == 1

    written.clear()
    every = LatentPreviews(ctx, 5, (32, 24), interval_s=0)
    for step in range(1, 6):
        every.step(step, latents)
    assert [w["data"]["preview"]["step"] for w in written] == [1, 2, 3, 4, 5]
    preview = written[0]["data"]["preview"]
    assert (preview["mime"], preview["width"], preview["height"], preview["of"]) == ("image/jpeg", 32, 24, 5)
    assert open_jpeg(preview["b64"]).size == (32, 24)


def test_emit_data_refuses_a_payload_over_the_limit(ctx: TaskContext, written: list):
    def payload(size: int) -> dict[str, str]:
        data = {"blob": ""}
        data["blob"] = "x" * (size - len(orjson.dumps(data)))
        return data

    ctx.emit_data(payload(MAX_DATA_EVENT_BYTES))
    assert len(written) == 1
    with pytest.raises(DataEventTooLarge) as err:
        ctx.emit_data(payload(MAX_DATA_EVENT_BYTES + 1))
    assert isinstance(err.value, ValueError) and len(written) == 1
    assert f"{MAX_DATA_EVENT_BYTES + 1} bytes" in str(err.value) and f"limit of {MAX_DATA_EVENT_BYTES} bytes" in str(err.value)


def test_the_cli_shows_a_preview_and_audio_progress_in_words():
    b64 = base64.b64encode(b"\xff" * 10035).decode()
    line = describe_data({"preview": {"mime": "image/jpeg", "b64": b64, "width": 256, "height": 144,
                                      "step": 12, "of": 30}})
    assert line == "preview frame, step 12/30, 9.8 KiB"
    assert describe_data({"audio_progress": {"seconds": 12.0, "of": 30.0}}) == "12.0 s of 30 s"


# -- end to end -----------------------------------------------------------------------------


async def test_a_render_sends_jpeg_previews_of_its_latents_through_the_stream_and_the_hub(
    control_plane: ControlPlane, worker_factory, upload_models, authenticator, tmp_path: Path
):
    import numpy as np

    await upload_models("sd15", "animatediff-motion-adapter")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    graph = {"nodes": [{"id": "video", "task": "render_video", "plane": "python", "params": {
        "prompt": "a cat with a dog", "seed": 3, "num_frames": 4, "steps": 3, "width": 64, "height": 48}}]}
    async with hub_server(control_plane.bridge, authenticator) as (_, url):
        follower = await Follower.open(url, authenticator.mint("alice"))
        job_id = (await control_plane.submit(graph, user="alice")).job_id
        await follower.subscribe(job_id, since=0)
        job = await wait_for_job(control_plane, job_id, timeout_s=90)
        assert job.status == "succeeded", node(job, "video").error
        stream = [e for e in await control_plane.bridge.events(job_id) if e.type == "data" and "preview" in e.data]
        await follower.wait_for(lambda: follower.last(job_id) == job.seq)
        await follower.close()

    previews = [e.data["preview"] for e in stream]
    assert previews and len(previews) == node(job, "video").output["previews"]
    assert previews[0]["step"] == 1  # every render shows one, at its first step
    assert [p["step"] for p in previews] == sorted({p["step"] for p in previews})
    for preview in previews:
        assert set(preview) == {"mime", "b64", "width", "height", "step", "of"}
        assert (preview["mime"], preview["width"], preview["height"], preview["of"]) == ("image/jpeg", 64, 48, 3)
        assert len(preview["b64"]) <= MAX_PREVIEW_B64
        image = open_jpeg(preview["b64"])
        assert image.size == (64, 48)
        assert np.asarray(image).std() > 1.0, "a blank preview"
    # the hub delivered them as they are in the stream
    ws_previews = [e["data"]["preview"] for e in follower.events[job_id]
                   if e["type"] == "data" and "preview" in (e.get("data") or {})]
    assert ws_previews == previews

    # a long render (FreeNoise windows over 20 frames) has its previews too
    graph["nodes"][0]["params"].update(num_frames=20, steps=1, width=32, height=32)
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=90)
    assert job.status == "succeeded", node(job, "video").error
    assert node(job, "video").output["segments"] == 2
    [long] = [e.data["preview"] for e in await control_plane.bridge.events(job.id)
              if e.type == "data" and "preview" in e.data]
    assert (long["step"], long["of"], long["width"], long["height"]) == (1, 1, 32, 32)
    assert open_jpeg(long["b64"]).size == (32, 32)


async def test_generate_music_reports_the_seconds_made_so_far_in_step_with_its_progress(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    await upload_models("musicgen-small")
    # a 3 s window: 8 s are 4 windows (3 s, then up to 2 s more each, continued from the last second)
    await worker_factory(model_cache_dir=str(tmp_path / "cache"),
                         models_config=registry(tmp_path, {"musicgen-small": {"window_s": 3}}))
    graph = {"nodes": [{"id": "music", "task": "generate_music", "plane": "python", "params": {
        "prompt": "lo fi hip hop beat", "duration_s": 8.0, "seed": 4, "continuation_overlap_s": 1.0}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=90)
    assert job.status == "succeeded", node(job, "music").error
    assert node(job, "music").output["windows"] == 4

    events = [e for e in await control_plane.bridge.events(job.id) if e.node_id == "music"]
    audio = [(e.seq, e.data["audio_progress"]) for e in events if e.type == "data" and "audio_progress" in e.data]
    seconds = [a["seconds"] for _, a in audio]
    print(f"\n8 s of music: audio_progress at {seconds}")
    assert len(audio) >= 3 and {a["of"] for _, a in audio} == {8.0}
    assert seconds == sorted(set(seconds)) and seconds[-1] == 8.0  # from the first step (0 s made) to the end
    # progress is the fraction of the seconds made: whole codec frames (the tiny model's 50 a second),
    # and between the seconds reported before and after it
    progress = [(e.seq, e.progress) for e in events if e.type == "progress" and e.progress]
    assert progress[-1][1] == 1.0
    for seq, fraction in progress:
        assert fraction * 8.0 * 50 == pytest.approx(round(fraction * 8.0 * 50), abs=0.05), fraction
        before = [a["seconds"] for s, a in audio if s < seq]
        after = [a["seconds"] for s, a in audio if s > seq]
        assert (before[-1] if before else 0.0) / 8.0 <= fraction + 1e-4
        if after:
            assert fraction <= after[0] / 8.0 + 1e-4
