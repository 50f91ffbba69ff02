"""ArtifactStore against the real embedded S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import jsonschema
import pytest

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.errors import ObjectNotFound

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "dualplane/common/schemas/artifact.schema.json"


def _tamper_signature(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_put_records_reference_and_get_returns_bytes(artifact_store: ArtifactStore) -> None:
    data = os.urandom(14_000)
    ref = await artifact_store.put("job1", "music", "music.wav", data, "audio/wav")
    assert ref == {
        "name": "music.wav",
        "bucket": artifact_store.bucket,
        "key": "jobs/job1/music/music.wav",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "audio/wav",
        "url": None,
    }
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(ref)
    assert await artifact_store.get(ref["key"]) == data


async def test_put_is_idempotent(artifact_store: ArtifactStore) -> None:
    first = await artifact_store.put("j", "n", "out.txt", b"same", "text/plain")
    second = await artifact_store.put("j", "n", "out.txt", b"same", "text/plain")
    assert first == second
    assert await artifact_store.get(first["key"]) == b"same"


async def test_presigned_url_serves_bytes_and_refuses_tampering(
    artifact_store: ArtifactStore,
) -> None:
    data = b"presigned payload " * 100
    ref = await artifact_store.put("j", "n", "blob.bin", data, "application/octet-stream")
    url = await artifact_store.presigned_url(ref["key"], expires_s=300)
    async with httpx.AsyncClient() as client:
        good = await client.get(url)
        assert good.status_code == 200
        assert good.content == data
        assert (await client.get(_tamper_signature(url))).status_code == 403


async def test_presigned_url_expires(artifact_store: ArtifactStore) -> None:
    ref = await artifact_store.put("j", "n", "short.bin", b"x", "application/octet-stream")
    url = await artifact_store.presigned_url(ref["key"], expires_s=1)
    await asyncio.sleep(2.1)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 403


@pytest.mark.parametrize("name", ["", "a/b", "..", "../x", "x..", "a\\b", "a\nb"])
async def test_invalid_names_are_rejected(artifact_store: ArtifactStore, name: str) -> None:
    with pytest.raises(ValueError):
        artifact_store.key_for("j", "n", name)
    with pytest.raises(ValueError):
        await artifact_store.put("j", "n", name, b"x", "text/plain")


@pytest.mark.parametrize(
    ("job_id", "node_id"), [("", "n"), ("j/k", "n"), ("j", ".."), ("j", "a/b")]
)
def test_invalid_job_and_node_ids_are_rejected(job_id: str, node_id: str) -> None:
    with pytest.raises(ValueError):
        ArtifactStore.key_for(job_id, node_id, "ok.bin")


async def test_delete_prefix_removes_only_that_prefix(artifact_store: ArtifactStore) -> None:
    for node in ("a", "b", "c"):
        await artifact_store.put("j1", node, "out.bin", node.encode(), "text/plain")
    kept = await artifact_store.put("j2", "a", "out.bin", b"keep", "text/plain")
    assert await artifact_store.delete_prefix("jobs/j1/") == 3
    for node in ("a", "b", "c"):
        with pytest.raises(ObjectNotFound):
            await artifact_store.get(f"jobs/j1/{node}/out.bin")
    assert await artifact_store.get(kept["key"]) == b"keep"
    assert await artifact_store.delete_prefix("jobs/j1/") == 0


async def test_put_file_and_get_file_stream_large_objects(
    artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(os.urandom(20 * 1024 * 1024 + 123))  # > one 16 MiB part: multipart upload
    ref = await artifact_store.put_file("models/tiny/model.safetensors", source)
    assert ref["name"] == "model.safetensors"
    assert ref["size"] == source.stat().st_size
    assert ref["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    target = await artifact_store.get_file(ref["key"], tmp_path / "down" / "model.safetensors")
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError):
        await artifact_store.put_file("models/../escape", source)
