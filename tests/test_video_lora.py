"""render_video (AnimateDiff) and train_lora (peft) end to end: graphs submitted to the control
plane, run by real workers on the tiny models fetched from the object store."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dualplane.common.artifacts import ArtifactStore
from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job, wait_for_node

pytestmark = pytest.mark.ml

VIDEO_MODELS = ("sd15", "animatediff-motion-adapter")


@pytest.fixture
async def video_models(upload_models) -> ArtifactStore:
    return await upload_models(*VIDEO_MODELS)


def video_node(node_id: str = "video", **params) -> dict:
    return {"id": node_id, "task": "render_video", "plane": "python",
            "params": {"prompt": "a cat with a dog", "seed": 7, **params}}


async def put_images(store: ArtifactStore, count: int = 2) -> list[str]:
    """Small PNGs in POST /uploads' layout: stripes of two colours, each image its own."""
    import numpy as np
    from PIL import Image

    keys = []
    for i in range(count):
        pixels = np.zeros((48, 40, 3), dtype=np.uint8)
        pixels[:, ::4] = (255, 40 * i, 0)
        pixels[::6, :] = (0, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        keys.append((await store.put_upload("alice", f"img{i}.png", buf.getvalue(), "image/png"))["key"])
    return keys


def mp4_info(path: Path) -> tuple[dict, int]:
    """(metadata of the first stream, frames decoded)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return meta, count


async def node_events(plane: ControlPlane, job_id: str, node_id: str, kind: str) -> list:
    return [e for e in await plane.bridge.events(job_id) if e.node_id == node_id and e.type == kind]


# -- render_video ---------------------------------------------------------------------------


async def test_render_video_writes_an_mp4_with_the_requested_frames_and_fps(
    control_plane: ControlPlane, worker_factory, video_models: ArtifactStore, tmp_path: Path
):
    import imageio_ffmpeg
    from PIL import Image

    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    graph = {"nodes": [video_node(num_frames=6, fps=5, steps=3, width=64, height=48)]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=90)

    assert job.status == "succeeded", node(job, "video").error
    out = node(job, "video").output
    assert out["video"] == f"jobs/{job.id}/video/video.mp4" and out["poster"] == f"jobs/{job.id}/video/poster.png"
    assert (out["frames"], out["fps"], out["width"], out["height"], out["steps"]) == (6, 5, 64, 48, 3)
    assert out["steps_per_s"] > 0 and out["model_load_s"] > 0
    assert {a.key: a.content_type for a in node(job, "video").artifacts} == {
        out["video"]: "video/mp4", out["poster"]: "image/png"}

    path = tmp_path / "video.mp4"
    path.write_bytes(await video_models.get(out["video"]))
    meta, decoded = mp4_info(path)
    assert meta["fps"] == 5 and tuple(meta["size"]) == (64, 48) and meta["codec"].startswith("h264")
    assert decoded == 6
    assert imageio_ffmpeg.count_frames_and_secs(str(path)) == (6, pytest.approx(6 / 5, abs=0.01))

    poster = Image.open(io.BytesIO(await video_models.get(out["poster"])))
    assert poster.format == "PNG" and poster.size == (64, 48) and poster.mode == "RGB"

    steps = [e.progress for e in await node_events(control_plane, job.id, "video", "progress")
             if e.progress and 0 < e.progress <= 1 and e.message is None]
    assert steps[:3] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-3)  # one event per denoising step


async def test_cancelling_a_render_stops_within_a_step(
    control_plane: ControlPlane, worker_factory, video_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    job_id = (await control_plane.submit({"nodes": [video_node(steps=200, num_frames=4)]})).job_id
    await wait_for_node(control_plane, job_id, "video", "running", timeout_s=60)
    deadline = time.monotonic() + 60
    while (node(await control_plane.get_job(job_id), "video").progress or 0) < 0.02:  # denoising
        assert time.monotonic() < deadline, "the render never reported progress"
        await asyncio.sleep(0.02)
    asked = time.time()
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=10)

    assert job.status == "cancelled"
    video = node(job, "video")
    assert video.status == "cancelled" and "cancelled" in (video.reason or "")
    assert video.finished_at - asked < 2.0
    assert video.progress < 0.5
    after = [e for e in await node_events(control_plane, job_id, "video", "progress") if e.ts > asked]
    # progress is coalesced to 1 % (2 of 200 steps): one step is at most one event, plus the
    # step running while the cancel request travels
    assert len(after) <= 3, [e.progress for e in after]
    assert not video.artifacts


# -- train_lora -----------------------------------------------------------------------------


async def test_a_trained_lora_loads_and_changes_the_render_without_leaking(
    control_plane: ControlPlane, worker_factory, video_models: ArtifactStore, tmp_path: Path
):
    from PIL import Image
    from safetensors.torch import load_file

    # the presigned URL points at the test's S3 on loopback: allowed explicitly, as a deployment would
    await worker_factory(model_cache_dir=str(tmp_path / "cache"), url_fetch_allow=[video_models.endpoint])
    first, second = await put_images(video_models)
    images = [first, await video_models.presigned_url(second)]  # an object key and an http URL
    assert images[1].startswith("http://")
    render = {"num_frames": 2, "steps": 2, "width": 32, "height": 32}
    graph = {"nodes": [
        {"id": "lora", "task": "train_lora", "plane": "python",
         "params": {"images": images, "instance_prompt": "a cat", "steps": 8, "learning_rate": 0.05,
                    "checkpoint_every": 4, "seed": 1}},
        {**video_node("plain", **render)},
        {**video_node("styled", lora={"$ref": "lora.output.lora"}, **render), "needs": ["lora", "plain"]},
        {**video_node("after", **render), "needs": ["styled"]},  # the warm pipeline, LoRA unloaded
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=120)

    assert job.status == "succeeded", [(n.id, n.error) for n in job.graph.nodes if n.error]
    trained = node(job, "lora").output
    assert trained["lora"] == f"jobs/{job.id}/lora/pytorch_lora_weights.safetensors"
    # the checkpoint (written at step 4) is the task's own state, not one of its outputs
    assert [a.key for a in node(job, "lora").artifacts] == [trained["lora"]]
    assert (trained["steps"], trained["resumed_from_step"]) == (8, 0)
    assert trained["final_loss"] > 0 and trained["steps_per_s"] > 0 and trained["unet_load_s"] > 0
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(await video_models.get(trained["lora"]))
    state = load_file(weights)
    assert state and all(k.startswith("unet.") and "lora" in k for k in state)
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora.up" in k or "lora_B" in k)
    assert node(job, "styled").output["lora"] == trained["lora"]

    async def first_frame(node_id: str):
        import numpy as np

        return np.asarray(Image.open(io.BytesIO(await video_models.get(node(job, node_id).output["poster"]))),
                          dtype=np.int16)

    plain, styled, after = [await first_frame(n) for n in ("plain", "styled", "after")]
    assert abs(styled - plain).max() > 0  # same seed and prompt: the LoRA made the difference
    assert (after == plain).all()  # and it did not stay in the warm pipeline


async def test_checkpoints_are_written_by_training_time_unless_a_step_interval_is_given(
    control_plane: ControlPlane, worker_factory, video_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    images = [(await put_images(video_models, count=1))[0]]
    common = {"images": images, "steps": 6, "seed": 2}
    graph = {"nodes": [
        # by default a checkpoint waits for 60 s of training: this short run writes none
        {"id": "default", "task": "train_lora", "plane": "python", "params": common},
        # a due time shorter than a step: one after every step but the last
        {"id": "timed", "task": "train_lora", "plane": "python", "params": {**common, "checkpoint_every_s": 1e-6}},
        # a step interval wins over the time
        {"id": "stepped", "task": "train_lora", "plane": "python",
         "params": {**common, "checkpoint_every": 4, "checkpoint_every_s": 1e-6}},
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=120)

    assert job.status == "succeeded", [(n.id, n.error) for n in job.graph.nodes if n.error]

    async def checkpoint_steps(node_id: str) -> list[int]:
        return [e.data["checkpoint"]["step"] for e in await node_events(control_plane, job.id, node_id, "data")
                if e.data and "checkpoint" in e.data]

    assert await checkpoint_steps("default") == []
    assert await checkpoint_steps("timed") == [1, 2, 3, 4, 5]
    assert await checkpoint_steps("stepped") == [4]


def _spawn_worker(settings, worker_id: str, cache_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, REDIS_URL=settings.redis_url, S3_ENDPOINT=settings.s3_endpoint,
               S3_ACCESS_KEY=settings.s3_access_key, S3_SECRET_KEY=settings.s3_secret_key,
               S3_BUCKET=settings.s3_bucket, DUALPLANE_LEASE_S=str(settings.lease_s),
               DUALPLANE_WORKER_ID=worker_id, DUALPLANE_READ_BLOCK_MS="100", DUALPLANE_WORKER_PORT="0",
               DUALPLANE_MODEL_CACHE_DIR=str(cache_dir))
    return subprocess.Popen([sys.executable, "-m", "dualplane", "worker"], env=env)


async def test_training_resumes_from_its_checkpoint_after_the_worker_is_killed(
    control_plane: ControlPlane, settings, worker_factory, video_models: ArtifactStore, tmp_path: Path
):
    from safetensors.torch import load_file

    images = await put_images(video_models, count=3)
    params = {"images": images, "steps": 40, "checkpoint_every": 5, "seed": 5, "learning_rate": 0.01}
    graph = {"nodes": [{"id": "lora", "task": "train_lora", "plane": "python", "params": params}]}
    victim = _spawn_worker(settings, "victim", tmp_path / "victim-cache")
    try:
        job_id = (await control_plane.submit(graph)).job_id
        deadline = time.monotonic() + 90
        while not (checkpoints := [e.data["checkpoint"] for e in await node_events(control_plane, job_id, "lora", "data")
                                   if e.data and "checkpoint" in e.data]):
            assert time.monotonic() < deadline, "no checkpoint was written"
            assert victim.poll() is None, "the worker process exited"
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert checkpoints[0] == {"key": f"jobs/{job_id}/lora/checkpoint.safetensors", "step": 5}
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    job = await wait_for_job(control_plane, job_id, timeout_s=90)

    assert job.status == "succeeded", node(job, "lora").error
    lora = node(job, "lora")
    out = lora.output
    assert lora.attempts == 2
    assert out["steps"] == 40
    assert 5 <= out["resumed_from_step"] < 40 and out["resumed_from_step"] % 5 == 0  # not from zero
    resumed = [e for e in await node_events(control_plane, job_id, "lora", "data")
               if e.data and "resumed_from_step" in e.data]
    assert [e.data["resumed_from_step"] for e in resumed] == [out["resumed_from_step"]]
    # the rescuer's progress starts where the checkpoint left off
    later = [e.progress for e in await node_events(control_plane, job_id, "lora", "progress") if e.ts > resumed[0].ts]
    assert later and min(later) > out["resumed_from_step"] / 40

    # an uninterrupted run of the same params draws the same noise: resuming changed nothing
    again = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=90)
    assert node(again, "lora").output["resumed_from_step"] == 0
    first, second = (tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    first.write_bytes(await video_models.get(out["lora"]))
    second.write_bytes(await video_models.get(node(again, "lora").output["lora"]))
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
