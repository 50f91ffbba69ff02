"""Weights provenance: `dualplane models pull` writes manifests that say "real", the tiny models say
"random", the model store reads that without downloading, and workers publish it per model.

Real Redis and SeaweedFS (conftest); the CLI runs as a person runs it, in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.bridge import Bridge
from dualplane.common.models import CapabilityManifest
from dualplane.common.settings import ModelSettings, Settings
from dualplane.devstack.services import free_port
from dualplane.ml.model_store import (
    MANIFEST,
    TINY_MARKER,
    ModelError,
    ModelRegistry,
    ModelStore,
    build_manifest,
    upload_model_dir,
)
from tests.helpers import unique_name

REPO = Path(__file__).resolve().parent.parent


def model_dir(root: Path, name: str, *, tiny: bool = False) -> Path:
    """A checkpoint-shaped directory (a config and a weights file)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": name}))
    (path / "model.safetensors").write_bytes(os.urandom(4096))
    if tiny:
        (path / TINY_MARKER).write_text(json.dumps({"tiny_version": 0, "name": name}))
    return path


def pull(settings: Settings, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``python -m dualplane models pull ...`` against the test's store, with no hub reachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALPLANE_", "S3_", "HF_"))}
    env.update(S3_ENDPOINT=settings.s3_endpoint or "", S3_ACCESS_KEY=settings.s3_access_key or "",
               S3_SECRET_KEY=settings.s3_secret_key or "", S3_BUCKET=settings.s3_bucket,
               HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf-home"))  # an empty hub cache: nothing to fall back on
    return subprocess.run([sys.executable, "-m", "dualplane", "models", "pull", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def published(settings: Settings, worker_id: str) -> CapabilityManifest:
    bridge = Bridge(settings.bridge_config())
    await bridge.connect()
    try:
        manifests = [CapabilityManifest.model_validate_json(raw) for raw in await bridge.live_workers()]
    finally:
        await bridge.close()
    return next(m for m in manifests if m.worker_id == worker_id)


async def remote_manifest(store: ArtifactStore, name: str) -> dict:
    return json.loads(await store.get(f"models/{name}/{MANIFEST}"))


# -- pull -------------------------------------------------------------------------------------


@pytest.mark.ml
async def test_pull_from_dir_uploads_real_weights_and_a_worker_publishes_them(
    settings: Settings, worker_factory, tmp_path: Path
):
    pytest.importorskip("torch")
    from dualplane.ml.tiny import make_tiny

    store = store_from_settings(settings.store)
    await store.ensure_bucket()
    # speecht5-tts: tiny (random); musicgen-small: random first, then real weights are pulled over it
    await upload_model_dir(store, "speecht5-tts", model_dir(tmp_path, "tts", tiny=True))
    await upload_model_dir(store, "musicgen-small", model_dir(tmp_path, "old", tiny=True))
    checkpoint = make_tiny(tmp_path / "ckpt", ["musicgen-small"])["musicgen-small"]
    (checkpoint / TINY_MARKER).unlink()  # stands in for a real checkpoint: the same files save_pretrained writes

    done = pull(settings, "musicgen-small", "--from-dir", str(checkpoint), home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "weights real" in done.stdout
    manifest = await remote_manifest(store, "musicgen-small")
    assert manifest["weights"] == "real" and manifest["origin"] == f"dir:{checkpoint.resolve()}"
    assert "model.safetensors" in manifest["files"] and TINY_MARKER not in manifest["files"]
    assert (await remote_manifest(store, "speecht5-tts"))["weights"] == "random"

    running = await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    manifest = await published(settings, running.worker.worker_id)
    weights = {m.name: (m.kind, m.weights) for m in manifest.models}
    assert weights["musicgen-small"] == ("musicgen", "real")
    assert weights["speecht5-tts"] == ("speecht5-tts", "random")
    assert weights["sd15"] == ("sd15", "unknown")  # nothing uploaded
    assert set(weights) == set(ModelRegistry.load().names())

    # what the worker downloads is the pulled checkpoint, and its cached manifest still says real
    path = await running.worker.models.store.ensure_local("musicgen-small")
    assert (path / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    assert json.loads((path / MANIFEST).read_text())["weights"] == "real"


async def test_pull_from_the_hub_without_a_hub_is_one_line_and_exit_code_2(settings: Settings, tmp_path: Path):
    done = pull(settings, "musicgen-small", "--from-hub", "facebook/musicgen-small", home=tmp_path)

    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert errors[-1].startswith("dualplane models pull: error: cannot download 'facebook/musicgen-small'")
    assert "Traceback" not in done.stderr
    store = store_from_settings(settings.store)
    await store.ensure_bucket()
    assert await store.keys("models/") == []  # nothing uploaded


async def test_a_name_outside_the_registry_needs_a_kind_and_is_told_how_to_register(
    settings: Settings, tmp_path: Path
):
    checkpoint = model_dir(tmp_path, "ckpt")

    refused = pull(settings, "my-musicgen", "--from-dir", str(checkpoint), home=tmp_path)
    assert refused.returncode == 2 and "unknown model 'my-musicgen'" in refused.stderr
    assert "--kind" in refused.stderr and "Traceback" not in refused.stderr

    wrong_kind = pull(settings, "sd15", "--from-dir", str(checkpoint), "--kind", "musicgen", home=tmp_path)
    assert wrong_kind.returncode == 2 and "is a 'sd15'" in wrong_kind.stderr

    done = pull(settings, "my-musicgen", "--from-dir", str(checkpoint), "--kind", "musicgen", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '[models.my-musicgen]\nkind = "musicgen"\nsource = "s3:models/my-musicgen"' in done.stdout
    snippet = done.stdout[done.stdout.index("[models.my-musicgen]"):]
    registry = ModelRegistry.from_dict(tomllib.loads(snippet))
    assert registry.get("my-musicgen").source == "s3:models/my-musicgen"
    store = store_from_settings(settings.store)
    assert (await remote_manifest(store, "my-musicgen"))["weights"] == "real"


# -- the store reads weights from manifests ------------------------------------------------------


async def test_weights_of_every_source_kind_without_downloading(artifact_store: ArtifactStore, tmp_path: Path):
    with_manifest = model_dir(tmp_path, "with-manifest")
    (with_manifest / MANIFEST).write_text(json.dumps({"files": {}, "weights": "real"}))
    registry = ModelRegistry.from_dict({"models": {
        "wheel": {"kind": "piper", "source": "package:dualplane/data_plane"},
        "plain-dir": {"kind": "t", "source": f"local:{model_dir(tmp_path, 'plain')}"},
        "tiny-dir": {"kind": "t", "source": f"local:{model_dir(tmp_path, 'tiny', tiny=True)}"},
        "declared-dir": {"kind": "t", "source": f"local:{with_manifest}"},
        "hub": {"kind": "t", "source": "hub:org/model"},
        "pulled": {"kind": "t", "source": "s3:models/pulled"},
        "legacy-tiny": {"kind": "t", "source": "s3:models/legacy-tiny"},
        "legacy": {"kind": "t", "source": "s3:models/legacy"},
        "absent": {"kind": "t", "source": "s3:models/absent"},
    }})
    await upload_model_dir(artifact_store, "pulled", model_dir(tmp_path, "p"), weights="real", origin="hub:org/p")
    for name, tiny in (("legacy-tiny", True), ("legacy", False)):  # manifests from before "weights"
        src = model_dir(tmp_path, name, tiny=tiny)
        await upload_model_dir(artifact_store, name, src)
        manifest = await remote_manifest(artifact_store, name)
        del manifest["weights"], manifest["origin"]
        (tmp_path / "m.json").write_text(json.dumps(manifest))
        await artifact_store.put_file(f"models/{name}/{MANIFEST}", tmp_path / "m.json")
    store = ModelStore(registry, artifact_store, tmp_path / "cache")

    facts = {f["name"]: f["weights"] for f in await store.model_facts()}

    assert facts == {"wheel": "real", "plain-dir": "unknown", "tiny-dir": "random", "declared-dir": "real",
                     "hub": "unknown", "pulled": "real", "legacy-tiny": "random", "legacy": "unknown",
                     "absent": "unknown"}
    assert store.downloads == 0 and not (tmp_path / "cache").exists()


async def test_known_weights_are_cached_and_an_upload_of_an_unknown_one_shows_at_once(
    artifact_store: ArtifactStore, tmp_path: Path
):
    registry = ModelRegistry.from_dict({"models": {"m": {"kind": "t", "source": "s3:models/m"}}})
    store = ModelStore(registry, artifact_store, tmp_path / "cache")
    assert await store.weights("m") == "unknown"
    await upload_model_dir(artifact_store, "m", model_dir(tmp_path, "a"), weights="random", origin="tiny")
    assert await store.weights("m") == "random"  # unknown is not remembered

    await upload_model_dir(artifact_store, "m", model_dir(tmp_path, "b"), weights="real", origin="dir:b")
    assert await store.weights("m") == "random"  # within WEIGHTS_TTL_S: no GET, the cached answer
    assert await ModelStore(registry, artifact_store, tmp_path / "cache").weights("m") == "real"


async def test_a_worker_whose_store_is_down_publishes_unknown_and_keeps_running(
    settings: Settings, worker_factory, tmp_path: Path
):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    running = await worker_factory(s3_endpoint=dead, s3_bucket=unique_name("gone"),
                                   model_cache_dir=str(tmp_path / "cache"))

    manifest = await published(settings, running.worker.worker_id)
    registry = ModelRegistry.load()
    # weights in a wheel need no store; everything the store holds is unknown while it is down
    expected = {name: "real" if registry.get(name).scheme == "package" else "unknown" for name in registry.names()}
    assert {m.name: m.weights for m in manifest.models} == expected
    assert "unknown" in expected.values()
    await running.worker._announce()  # a heartbeat with the store still down
    assert (await published(settings, running.worker.worker_id)).models == manifest.models
    assert running.worker.consumer.failure is None


@pytest.mark.ml
async def test_make_tiny_uploads_say_random(artifact_store: ArtifactStore, tmp_path: Path):
    pytest.importorskip("torch")
    from dualplane.ml.tiny import make_and_upload

    await make_and_upload(artifact_store, tmp_path / "tiny", ["speecht5-hifigan"])

    manifest = await remote_manifest(artifact_store, "speecht5-hifigan")
    assert (manifest["weights"], manifest["origin"]) == ("random", "tiny")


def test_a_manifest_takes_only_the_three_weights_values(tmp_path: Path):
    with pytest.raises(ModelError, match="weights must be one of"):
        build_manifest("m", model_dir(tmp_path, "m"), weights="trained", origin="x")  # type: ignore[arg-type]


def test_the_model_prefix_moves_the_packaged_registry_and_unregistered_pulls(monkeypatch: pytest.MonkeyPatch):
    from dualplane.common.settings import Settings
    from dualplane.ml.model_store import ModelRegistry
    from dualplane.ml.pull import resolve_target

    monkeypatch.setenv("MODEL_S3_PATH", "s3://dualplane/weights/")  # the seeds' name and form
    settings = Settings()
    assert settings.model_prefix == "weights"
    moved = ModelRegistry.from_settings(settings.models)
    assert moved.get("musicgen-small").source == "s3:weights/musicgen-small"
    assert moved.get("piper-joe").scheme == "package"  # not in the store: untouched
    assert resolve_target(moved, "musicgen-small", None, model_prefix="weights").prefix == "weights/musicgen-small"
    assert resolve_target(moved, "mine", "sd15", model_prefix="weights").prefix == "weights/mine"
    assert ModelRegistry.from_settings(ModelSettings(model_prefix="models")).get(
        "musicgen-small").source == "s3:models/musicgen-small"
    for bad in ("s3://another-bucket/weights", "..", "a//b", "/"):
        monkeypatch.setenv("MODEL_S3_PATH", bad)
        with pytest.raises(ValueError, match="MODEL_S3_PATH"):
            Settings()
