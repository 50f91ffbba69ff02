"""What a job builds for itself goes when the job ends, by reference counting alone.

A model or tensor kept alive by a reference cycle stays until a full collection, which a busy
worker runs rarely: on a GPU that is VRAM the next job cannot have. Each test runs its jobs
once (models warm), then again with the cyclic GC off, and counts the live tensors."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dualplane.control_plane import ControlPlane
from tests.helpers import wait_for_job
from tests.test_video_lora import put_images
from tests.test_voice import pcm_wav, voiced

pytestmark = pytest.mark.ml

ALL_MODELS = ("musicgen-small", "sd15", "animatediff-motion-adapter", "speecht5-tts", "speecht5-hifigan")


def live_tensors() -> int:
    import torch

    return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


async def test_every_gpu_task_frees_what_its_job_built_without_the_cyclic_gc(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    store = await upload_models(*ALL_MODELS)
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    images = await put_images(store, count=2)
    clip = await store.put_upload("alice", "clip.wav", pcm_wav(voiced(110, 1.0, 16000, 1), 16000), "audio/wav")
    graph = {"nodes": [
        {"id": "music", "task": "generate_music", "plane": "python",
         "params": {"prompt": "lo fi beat", "duration_s": 0.3, "seed": 1}},
        {"id": "lora", "task": "train_lora", "plane": "python", "params": {"images": images, "steps": 2, "seed": 1}},
        {"id": "video", "task": "render_video", "plane": "python", "needs": ["lora"],
         "params": {"prompt": "a cat", "num_frames": 2, "steps": 2, "width": 32, "height": 32, "seed": 1,
                    "lora": {"$ref": "lora.output.lora"}}},
        {"id": "voice", "task": "train_voice", "plane": "python",
         "params": {"clips": [clip["key"]], "steps": 2, "seed": 1}},
        {"id": "speak", "task": "synthesize_voice", "plane": "python", "needs": ["voice"],
         "params": {"text": "the cat", "voice": {"$ref": "voice.output.voice"}, "seed": 1,
                    "minlenratio": 2.0, "maxlenratio": 2.0}},
    ]}

    async def run() -> None:
        job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=180)
        assert job.status == "succeeded", {n.id: n.error for n in job.graph.nodes if n.error}

    await run()  # models load and stay warm
    gc.collect()
    warm = live_tensors()
    gc.disable()
    try:
        await run()
        after = live_tensors()
    finally:
        gc.enable()
    assert after <= warm, f"{after - warm} tensors outlived the second job"
