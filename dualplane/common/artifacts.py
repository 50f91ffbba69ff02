"""Artifact store: node outputs (and later model files) in any S3-compatible object store.

Keys are deterministic (`jobs/<job>/<node>/<name>`) so a retried node overwrites its own output
instead of leaving duplicates, which makes `put` idempotent. The minio client is blocking, so
every call runs in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

if TYPE_CHECKING:
    from dualplane.common.settings import Settings

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_HASH_CHUNK_BYTES = 1 << 20
_MULTIPART_PART_BYTES = 16 << 20


def _check_segment(value: str, what: str) -> str:
    """Reject key segments that could escape their prefix or collide with another job's keys."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if "/" in value or "\\" in value or ".." in value:
        raise ValueError(f"{what} must not contain '/', '\\\\' or '..': {value!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")
    return value


def _check_key(key: str) -> str:
    """Keys passed in directly (models, downloads) must still be relative and well formed."""
    for segment in key.split("/"):
        _check_segment(segment, "key segment")
    return key


def _file_sha256(path: Path) -> tuple[str, int]:
    """Hash a file in chunks so large model files never sit in memory whole."""
    digest = hashlib.sha256()
    size_bytes = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size_bytes += len(chunk)
    return digest.hexdigest(), size_bytes


def _artifact_ref(
    *, name: str, bucket: str, key: str, size: int, sha256: str, content_type: str
) -> dict[str, Any]:
    """Exactly the fields of artifact.schema.json; `url` is filled in only when served."""
    return {
        "name": name,
        "bucket": bucket,
        "key": key,
        "size": size,
        "sha256": sha256,
        "content_type": content_type,
        "url": None,
    }


class ArtifactStore:
    """Async facade over one bucket of an S3 endpoint."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
    ) -> None:
        # An explicit region spares the client a GetBucketLocation round trip per bucket.
        self.bucket = bucket
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )

    # ------------------------------------------------------------------ keys

    @staticmethod
    def key_for(job_id: str, node_id: str, name: str) -> str:
        """Deterministic key of one node output; validates every segment."""
        _check_segment(job_id, "job_id")
        _check_segment(node_id, "node_id")
        _check_segment(name, "artifact name")
        return f"jobs/{job_id}/{node_id}/{name}"

    # ------------------------------------------------------------------ bucket

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing; tolerate a concurrent creator."""
        await asyncio.to_thread(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # ------------------------------------------------------------------ bytes

    async def put(
        self, job_id: str, node_id: str, name: str, data: bytes, content_type: str
    ) -> dict[str, Any]:
        """Store a node output and return its artifact reference (same bytes → same reference)."""
        key = self.key_for(job_id, node_id, name)
        sha256 = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
            metadata={"sha256": sha256},
        )
        return _artifact_ref(
            name=name, bucket=self.bucket, key=key, size=len(data), sha256=sha256,
            content_type=content_type,
        )  # fmt: skip

    async def put_upload(self, user: str, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Store a user's input file under ``uploads/<user>/<sha256>/<name>`` (content-addressed,
        so uploading the same file twice gives the same key)."""
        digest = hashlib.sha256(data).hexdigest()
        key = f"uploads/{_check_segment(user, 'user')}/{digest}/{_check_segment(name, 'name')}"
        await asyncio.to_thread(self._client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                                content_type=content_type)
        return _artifact_ref(bucket=self.bucket, key=key, name=name, size=len(data), sha256=digest,
                             content_type=content_type)

    async def get(self, key: str) -> bytes:
        """Whole object in memory; use get_file for large objects."""
        return await asyncio.to_thread(self._get_sync, key)

    def _get_sync(self, key: str) -> bytes:
        response = self._client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    # ------------------------------------------------------------------ files

    async def put_file(
        self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> dict[str, Any]:
        """Upload a file streaming (multipart when large) under an explicit key.

        Takes a key rather than job/node/name because model files live outside `jobs/`;
        use `key_for(...)` for node outputs. The reference's name is the key's last segment.
        """
        _check_key(key)
        sha256, size_bytes = await asyncio.to_thread(_file_sha256, Path(path))
        await asyncio.to_thread(
            self._client.fput_object,
            self.bucket,
            key,
            str(path),
            content_type=content_type,
            metadata={"sha256": sha256},
            part_size=_MULTIPART_PART_BYTES,
        )
        return _artifact_ref(
            name=key.rsplit("/", 1)[-1], bucket=self.bucket, key=key, size=size_bytes,
            sha256=sha256, content_type=content_type,
        )  # fmt: skip

    async def get_file(self, key: str, path: Path) -> Path:
        """Download streaming to `path` (minio writes a temp file and renames it on success)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._client.fget_object, self.bucket, key, str(path))
        return path

    # ------------------------------------------------------------------ urls and cleanup

    async def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A GET URL a client can fetch without credentials until it expires."""
        return await asyncio.to_thread(
            self._client.presigned_get_object,
            self.bucket,
            key,
            expires=timedelta(seconds=expires_s),
        )

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (e.g. `jobs/<job>/`); returns how many were deleted."""
        return await asyncio.to_thread(self._delete_prefix_sync, prefix)

    def _delete_prefix_sync(self, prefix: str) -> int:
        names = [
            obj.object_name
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if obj.object_name is not None
        ]
        if not names:
            return 0
        errors = list(self._client.remove_objects(self.bucket, [DeleteObject(n) for n in names]))
        if errors:
            raise RuntimeError(
                f"failed to delete {len(errors)} objects under {prefix!r}: {errors[:3]}"
            )
        return len(names)


def store_from_settings(settings: Settings) -> ArtifactStore | None:
    """The artifact store the settings describe, or None when no S3 endpoint is configured."""
    if not settings.s3_endpoint:
        return None
    return ArtifactStore(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key or "",
        secret_key=settings.s3_secret_key or "",
        bucket=settings.s3_bucket,
        secure=settings.s3_secure,
    )
