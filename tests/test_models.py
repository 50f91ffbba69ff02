"""Model weights end to end: registry, object-store cache, warm cache, and MusicGen on a worker.

Everything runs on tiny random-initialised models of the real classes (``ml/tiny.py``),
loaded through the same ``from_pretrained`` path a full-size checkpoint takes.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import wave
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from pydantic import BaseModel, ConfigDict

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import Retry
from dualplane.control_plane import ControlPlane
from dualplane.data_plane import Worker
from dualplane.ml.model_store import (
    MANIFEST,
    ModelError,
    ModelManager,
    ModelRegistry,
    ModelStore,
    ModelUnavailable,
    UnknownModel,
    upload_model_dir,
)
from dualplane.tasks import default_registry
from tests.helpers import local_model_registry, node, planes_with, wait_for_job, wait_for_node

pytestmark = pytest.mark.ml


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST}


def local_registry(**dirs: Path) -> ModelRegistry:
    return ModelRegistry.from_dict({"models": {
        name: {"kind": "test", "source": f"local:{path}"} for name, path in dirs.items()}})


# -- registry -----------------------------------------------------------------------------


def test_packaged_registry_maps_the_default_names_to_the_object_store():
    registry = ModelRegistry.load()
    for name in ("musicgen-small", "sd15", "animatediff-motion-adapter", "speecht5-tts", "speecht5-hifigan"):
        assert registry.get(name).source == f"s3:models/{name}"
    assert registry.get("musicgen-small").kind == "musicgen"
    with pytest.raises(UnknownModel, match="unknown model 'nope'.*musicgen-small"):
        registry.get("nope")


def test_registry_rejects_a_bad_source(tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text('[models.x]\nkind = "musicgen"\nsource = "ftp://x"\n')
    with pytest.raises(ModelError, match="source must be"):
        ModelRegistry.load(config)


async def test_hub_sources_are_refused_with_a_clear_error(tmp_path: Path):
    registry = ModelRegistry.from_dict(
        {"models": {"m": {"kind": "musicgen", "source": "hub:facebook/musicgen-small"}}})
    with pytest.raises(ModelUnavailable, match="no hub access; upload the weights to the object store"):
        await ModelStore(registry, None, tmp_path).ensure_local("m")


# -- the object-store cache ----------------------------------------------------------------


@pytest.fixture
async def musicgen_in_s3(artifact_store: ArtifactStore, tiny_models) -> Path:
    await upload_model_dir(artifact_store, "musicgen-small", tiny_models["musicgen-small"])
    return tiny_models["musicgen-small"]


async def test_upload_then_ensure_local_gives_identical_verified_files(
    artifact_store: ArtifactStore, musicgen_in_s3: Path, tmp_path: Path
):
    store = ModelStore(ModelRegistry.load(), artifact_store, tmp_path / "cache")
    path = await store.ensure_local("musicgen-small")

    assert path == tmp_path / "cache" / "musicgen-small"
    assert files_of(path) == files_of(musicgen_in_s3)
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == set(files_of(musicgen_in_s3)) and "model.safetensors" in manifest["files"]
    assert store.downloads == 1
    await store.ensure_local("musicgen-small")  # complete cache: manifest compare + stats only
    assert store.downloads == 1
    assert not list((tmp_path / "cache").glob(".tmp-*"))


async def test_a_corrupted_cached_file_is_detected_and_downloaded_again(
    artifact_store: ArtifactStore, musicgen_in_s3: Path, tmp_path: Path
):
    store = ModelStore(ModelRegistry.load(), artifact_store, tmp_path / "cache")
    path = await store.ensure_local("musicgen-small")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))

    await store.ensure_local("musicgen-small")

    assert store.downloads == 2
    assert weights.read_bytes() == (musicgen_in_s3 / "model.safetensors").read_bytes()


async def test_concurrent_workers_download_once(
    artifact_store: ArtifactStore, musicgen_in_s3: Path, tmp_path: Path
):
    registry = ModelRegistry.load()
    stores = [ModelStore(registry, artifact_store, tmp_path / "cache") for _ in range(3)]  # three workers

    paths = await asyncio.gather(*(s.ensure_local("musicgen-small") for s in stores))

    assert len(set(paths)) == 1
    assert sum(s.downloads for s in stores) == 1
    assert files_of(paths[0]) == files_of(musicgen_in_s3)


async def test_a_model_missing_from_the_store_says_how_to_upload_it(
    artifact_store: ArtifactStore, tmp_path: Path
):
    store = ModelStore(ModelRegistry.load(), artifact_store, tmp_path / "cache")
    with pytest.raises(ModelUnavailable, match="make-tiny"):
        await store.ensure_local("sd15")


# -- the warm cache ------------------------------------------------------------------------


def test_second_load_is_warm_and_does_not_call_the_loader(tiny_models, tmp_path: Path):
    from dualplane.tasks.music import load_musicgen

    calls = []

    def loader(path, device, dtype):
        calls.append(path)
        return load_musicgen(path, device, dtype)

    store = ModelStore(local_registry(mg=tiny_models["musicgen-small"]), None, tmp_path)
    manager = ModelManager(store, max_bytes=1 << 30, device="cpu")
    first = manager.load("mg", loader)
    second = manager.load("mg", loader)

    assert len(calls) == 1
    assert first.load_s > 0 and second.load_s == 0.0 and second.cached
    assert second.model is first.model
    assert 50_000 < first.size_bytes < 2_000_000  # parameters of the tiny MusicGen, in float32


def test_extra_models_are_fetched_for_the_build_only(tmp_path: Path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    manager = ModelManager(ModelStore(local_registry(base=base, adapter=adapter), None, tmp_path),
                           max_bytes=1 << 20, device="cpu")
    calls = []

    def loader(path, device, dtype, adapter_path):
        calls.append((path, adapter_path))
        return object()

    first = manager.load("base", loader, key="with-adapter", extra=("adapter",))
    adapter.rmdir()  # a warm hit must not look for the adapter's files again
    second = manager.load("base", loader, key="with-adapter", extra=("adapter",))

    assert calls == [(base, adapter)]
    assert second.cached and second.model is first.model
    with pytest.raises(UnknownModel):
        manager.load("base", loader, key="other", extra=("no-such-model",))


def test_least_recently_used_models_are_evicted_over_budget(tmp_path: Path):
    import torch

    registry = local_registry(a=tmp_path, b=tmp_path, c=tmp_path)
    manager = ModelManager(ModelStore(registry, None, tmp_path), max_bytes=2 * 4000 + 100, device="cpu")
    calls = []

    def loader(path, device, dtype):
        calls.append(path)
        return torch.nn.Linear(1000, 1, bias=False)  # 1000 float32 = 4000 bytes

    manager.load("a", loader)
    manager.load("b", loader)
    manager.load("a", loader)  # a is now the most recently used
    manager.load("c", loader)  # over budget: b goes

    assert [w["name"] for w in manager.warm()] == ["a", "c"]
    assert manager.bytes_used == 8000
    assert manager.load("a", loader).load_s == 0.0
    assert manager.load("b", loader).load_s > 0  # loaded again
    assert len(calls) == 4


def test_concurrent_loads_of_one_model_load_once(tmp_path: Path):
    store = ModelStore(local_registry(m=tmp_path), None, tmp_path)
    manager = ModelManager(store, max_bytes=1 << 20, device="cpu")
    calls = []

    def slow_loader(path, device, dtype):
        calls.append(1)
        time.sleep(0.3)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.load("m", slow_loader))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(calls) == 1
    assert len({id(r.model) for r in results}) == 1


def test_unknown_model_fails_before_loading(tmp_path: Path):
    manager = ModelManager(ModelStore(local_registry(), None, tmp_path), max_bytes=1, device="cpu")
    with pytest.raises(UnknownModel):
        manager.load("nope", lambda *a: pytest.fail("loader called"))


async def test_async_tasks_load_through_aload(tmp_path: Path):
    manager = ModelManager(ModelStore(local_registry(m=tmp_path), None, tmp_path), max_bytes=1 << 20, device="cpu")

    def loader(path, device, dtype):
        return {"path": path, "device": device}

    first = await manager.aload("m", loader)
    assert first.model == {"path": tmp_path, "device": "cpu"} and first.load_s > 0
    assert (await manager.aload("m", loader)).load_s == 0.0
    with pytest.raises(RuntimeError, match="aload"):
        manager.load("m", lambda *a: None, key="other")  # blocking load on the event loop's thread


async def test_worker_serves_debug_torch(settings, tmp_path: Path):
    import httpx

    
    worker = Worker(settings.model_copy(update={"model_cache_dir": str(tmp_path)}))
    transport = httpx.ASGITransport(app=worker.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        body = (await client.get("/debug/torch")).json()
    assert body["torch"].startswith("2.") and body["device"] in ("cpu", "cuda")
    assert body["default_dtype"] == ("float32" if body["device"] == "cpu" else body["default_dtype"])
    assert body["warm_models"] == []


@pytest.mark.parametrize(("configured", "expected"), [(3, 3), (0, None)])
async def test_task_threads_get_the_configured_torch_thread_count(settings, tmp_path: Path, configured, expected):
    import os

    import httpx

    
    worker = Worker(settings.model_copy(update={"model_cache_dir": str(tmp_path), "torch_threads": configured,
                                                "concurrency": 4}))
    transport = httpx.ASGITransport(app=worker.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        body = (await client.get("/debug/torch")).json()  # answered from a task thread
    if expected is None:  # the default: on CPU, the cores shared among the concurrent tasks
        expected = max(1, (os.cpu_count() or 1) // 4) if body["device"] == "cpu" else body["threads"]
    assert body["threads"] == expected


# -- the tiny models -----------------------------------------------------------------------


def test_every_tiny_model_loads_back_through_its_real_class(tiny_models):
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline
    from transformers import SpeechT5ForTextToSpeech, SpeechT5HifiGan, SpeechT5Processor

    sd = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"], local_files_only=True,
                                                 safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    image = sd("a cat", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)

    adapter = MotionAdapter.from_pretrained(tiny_models["animatediff-motion-adapter"], local_files_only=True)
    video = AnimateDiffPipeline.from_pretrained(
        tiny_models["sd15"], motion_adapter=adapter, local_files_only=True,
        feature_extractor=None, image_encoder=None,
    )
    video.set_progress_bar_config(disable=True)
    frames = video("a cat", num_frames=4, num_inference_steps=2, height=32, width=32, output_type="np").frames
    assert frames.shape == (1, 4, 32, 32, 3)

    tts = SpeechT5ForTextToSpeech.from_pretrained(tiny_models["speecht5-tts"], local_files_only=True).eval()
    processor = SpeechT5Processor.from_pretrained(tiny_models["speecht5-tts"], local_files_only=True)
    vocoder = SpeechT5HifiGan.from_pretrained(tiny_models["speecht5-hifigan"], local_files_only=True).eval()
    ids = processor(text="hello rainy night", return_tensors="pt").input_ids
    speaker = torch.randn(1, tts.config.speaker_embedding_dim)
    with torch.no_grad():
        wav = tts.generate_speech(ids, speaker, vocoder=vocoder, minlenratio=1.0, maxlenratio=1.0)
    assert wav.ndim == 1 and wav.shape[0] >= 256 and wav.abs().max() > 1e-3


# -- generate_music on a worker ------------------------------------------------------------


def music_graph(duration_s: float, seed: int = 1) -> dict:
    return {"nodes": [{"id": "music", "task": "generate_music", "plane": "python",
                       "params": {"prompt": "lo fi beat with piano", "duration_s": duration_s, "seed": seed}}]}


async def test_generate_music_writes_a_real_wav_and_the_second_job_is_warm(
    control_plane: ControlPlane, worker_factory, uploaded_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    job = await wait_for_job(control_plane, (await control_plane.submit(music_graph(0.5))).job_id, timeout_s=60)

    assert job.status == "succeeded", node(job, "music").error
    out = node(job, "music").output
    artifacts = {a.name: a for a in node(job, "music").artifacts}
    assert set(artifacts) == {"music.wav", "music.opus"}  # lossless for the next node, Opus to play
    artifact = artifacts["music.wav"]
    assert out["audio"] == artifact.key == f"jobs/{job.id}/music/music.wav"
    assert artifact.content_type == "audio/wav" and artifacts["music.opus"].content_type == "audio/ogg"
    assert out["audio_compressed"] == artifacts["music.opus"].key
    body = await uploaded_models.get(artifact.key)
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    with wave.open(io.BytesIO(body)) as wav:
        rate, n, width = wav.getframerate(), wav.getnframes(), wav.getsampwidth()
        pcm = wav.readframes(n)
    assert rate == out["sample_rate"] == 8000  # the tiny EnCodec's rate
    assert width == 2
    assert abs(n / rate - 0.5) <= 1 / 50  # within one frame (50 frames/s)
    assert out["duration_s"] == pytest.approx(n / rate)
    samples = memoryview(pcm).cast("h")
    assert max(abs(s) for s in samples) > 100  # not silence
    assert out["tokens"] == 25 + 1  # 25 frames + (2 codebooks - 1) delay steps
    assert out["model_load_s"] > 0 and out["tokens_per_s"] > 0

    second = await wait_for_job(control_plane, (await control_plane.submit(music_graph(0.2, seed=2))).job_id,
                                timeout_s=30)
    assert second.status == "succeeded"
    assert node(second, "music").output["model_load_s"] == 0.0


async def test_a_seed_reproduces_its_music_while_other_jobs_sample_on_the_same_worker(
    control_plane: ControlPlane, worker_factory, uploaded_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))

    async def pcm(job_id: str, node_id: str = "music") -> bytes:
        job = await wait_for_job(control_plane, job_id, timeout_s=60)
        assert job.status == "succeeded", [(n.id, n.error) for n in job.graph.nodes if n.error]
        with wave.open(io.BytesIO(await uploaded_models.get(node(job, node_id).output["audio"]))) as wav:
            return wav.readframes(wav.getnframes())

    alone = await pcm((await control_plane.submit(music_graph(1.0, seed=1))).job_id)
    # the same seed again, now sampled next to another seed and an unseeded job on this worker
    crowd = {"nodes": [
        {"id": m, "task": "generate_music", "plane": "python",
         "params": {"prompt": "lo fi beat with piano", "duration_s": 1.0, **seed}}
        for m, seed in (("a", {"seed": 1}), ("b", {"seed": 2}), ("c", {}))
    ]}
    crowd_id = (await control_plane.submit(crowd)).job_id
    a, b = await pcm(crowd_id, "a"), await pcm(crowd_id, "b")

    assert a == alone
    assert b != a  # the seed decides the audio


async def test_cancelling_generation_stops_the_token_loop(
    control_plane: ControlPlane, worker_factory, uploaded_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    job_id = (await control_plane.submit(music_graph(120))).job_id
    await wait_for_node(control_plane, job_id, "music", "running", timeout_s=30)
    deadline = time.monotonic() + 30
    while (node((await control_plane.get_job(job_id)), "music").progress or 0) < 0.01:  # tokens are flowing
        assert time.monotonic() < deadline, "generation never reported progress"
        await asyncio.sleep(0.05)
    asked = time.time()
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=10)

    assert job.status == "cancelled"
    music = node(job, "music")
    assert music.status == "cancelled" and music.progress < 0.9
    assert music.finished_at - asked < 2.0
    assert "cancelled" in (music.reason or "")


# -- out of memory -----------------------------------------------------------------------------


class OomOnceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task("oom_once", plane="python", params=OomOnceParams, retry=Retry(max_attempts=2, backoff_s=0.05))
def oom_once(ctx: TaskContext, p: OomOnceParams) -> dict[str, Any]:
    """A test task: warms a model, then runs out of memory on its first attempt (torch's own
    error class, as CUDA raises it); the second reports what is still warm."""
    import torch

    if ctx.attempt == 1:
        ctx.models.load("tiny-local", lambda path, device, dtype: {"weights": path})
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return {"warm": [w["name"] for w in ctx.models.warm()]}


async def test_out_of_memory_drops_the_warm_models_before_the_retry(settings, tmp_path: Path):
    registry = default_registry()
    registry.add(oom_once.__task_spec__)  # type: ignore[attr-defined]
    async with planes_with(settings, registry, models_config=str(local_model_registry(tmp_path)),
                           model_cache_dir=str(tmp_path / "cache")) as plane:
        job = await wait_for_job(plane, (await plane.submit(
            {"nodes": [{"id": "o", "task": "oom_once", "plane": "python"}]})).job_id)

    assert job.status == "succeeded" and node(job, "o").attempts == 2
    assert node(job, "o").output == {"warm": []}  # the first attempt's model was let go


# -- tiny models of an older builder ---------------------------------------------------------


async def test_up_rebuilds_tiny_models_of_an_older_builder_but_never_real_weights(
    settings, tiny_models, tmp_path: Path
):
    from dualplane.common.artifacts import store_from_settings
    from dualplane.devstack.stack import _models_to_build
    from dualplane.ml.model_store import TINY_MARKER
    from dualplane.ml.tiny import TINY_VERSION

    assert all(json.loads((path / TINY_MARKER).read_text())["tiny_version"] == TINY_VERSION
               for path in tiny_models.values())
    store = store_from_settings(settings.store)
    await store.ensure_bucket()

    def model_dir(name: str, tiny_version: int | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "weights.bin").write_bytes(b"\1" * 64)
        if tiny_version is not None:
            (path / TINY_MARKER).write_text(json.dumps({"tiny_version": tiny_version}))
        return path

    for name, version in (("current", TINY_VERSION), ("older", TINY_VERSION - 1), ("real", None)):
        await upload_model_dir(store, name, model_dir(name, version))
    places = {name: f"models/{name}" for name in ("current", "older", "real", "absent")}

    assert await _models_to_build(store, places, MANIFEST, TINY_MARKER, TINY_VERSION) == (["absent"], ["older"])
