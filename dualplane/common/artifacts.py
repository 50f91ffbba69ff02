"""Artifact store: node outputs (and later model files) in any S3-compatible object store.

Keys are deterministic (`jobs/<job>/<node>/<name>`) so a retried node overwrites its own output
instead of leaving duplicates, which makes `put` idempotent. The minio client is blocking, so
every call runs in a worker thread to keep the event loop free.

Outages: every call is bounded by the client's timeouts and a small retry (minio itself retries
nothing but a region redirect; its default client would wait 5 minutes per read, 6 times). A
store that does not answer is :class:`~dualplane.common.errors.StoreUnavailable` (transient for
tasks, 503 for the API); a missing object on a read is
:class:`~dualplane.common.errors.ObjectNotFound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from dualplane.common.digest import HASH_CHUNK_BYTES, file_sha256
from dualplane.common.errors import ObjectNotFound, StoreUnavailable

if TYPE_CHECKING:
    from dualplane.common.settings import StoreSettings

log = logging.getLogger("dualplane.artifacts")

T = TypeVar("T")

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MULTIPART_PART_BYTES = 16 << 20

#: S3 answers that mean "not now" whatever their status says.
_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})
#: The health probe: short, no retries, and its answer is reused this long so /health stays cheap.
PROBE_CONNECT_S = 1.0
PROBE_READ_S = 2.0
PROBE_CACHE_S = 2.0
#: How long a plane's start waits for the bucket before going on without the store.
ENSURE_WAIT_S = 5.0
ENSURE_BACKOFF_S = 0.5
ENSURE_MAX_BACKOFF_S = 15.0


def _pool(connect_s: float, read_s: float, retries: int | bool, maxsize: int) -> urllib3.PoolManager:
    """A urllib3 pool with bounded waits. Refused connections and 5xx answers are retried
    (0 s, then 0.4 s apart), a read that timed out is not: that would double a frozen store's
    cost. Retry-After is ignored, since a store could ask for minutes."""
    retry = retries if retries is False else urllib3.Retry(
        total=retries, connect=retries, read=0, status=retries, other=0, backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504), raise_on_status=False, respect_retry_after_header=False)
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_s, read=read_s), retries=retry,
                               maxsize=maxsize, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())


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
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        retries: int = 2,
    ) -> None:
        # An explicit region spares the client a GetBucketLocation round trip per bucket.
        self.bucket = bucket
        self.endpoint = endpoint
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
            http_client=_pool(connect_timeout_s, read_timeout_s, retries, maxsize=10),
        )
        self._probe_client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
            http_client=_pool(min(PROBE_CONNECT_S, connect_timeout_s), min(PROBE_READ_S, read_timeout_s), False,
                              maxsize=1),
        )
        self._probe: asyncio.Future[bool] | None = None
        self._probed = (float("-inf"), False)

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """minio's and urllib3's failures as ours; ``key``: a read, whose 404 is ObjectNotFound."""
        try:
            yield
        except S3Error as exc:
            if key is not None and exc.code in _MISSING_CODES:
                raise ObjectNotFound(key) from None
            if exc.code in _TRANSIENT_CODES or getattr(exc.response, "status", 0) >= 500:
                raise StoreUnavailable(f"object store {self.endpoint}: {exc.code}: {exc.message}") from exc
            raise
        except (ServerError, InvalidResponseError) as exc:
            status = exc.status_code if isinstance(exc, ServerError) else exc._code
            if isinstance(status, int) and status >= 500:
                raise StoreUnavailable(f"object store {self.endpoint}: HTTP {status}") from exc
            raise
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            raise StoreUnavailable(f"object store {self.endpoint}: {type(reason).__name__}: {reason}") from exc

    async def _run(self, fn: Callable[..., T], *args: Any, key: str | None = None, **kwargs: Any) -> T:
        def call() -> T:
            with self._errors(key):
                return fn(*args, **kwargs)

        return await asyncio.to_thread(call)

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
        await self._run(self._ensure_bucket_sync)

    async def ensure_bucket_soon(self, wait_s: float = ENSURE_WAIT_S) -> asyncio.Task[None] | None:
        """A plane's start: create the bucket if the store answers within ``wait_s``; if it does
        not, return the task that keeps trying in the background (cancel it at stop), so the
        plane starts without its store and /health says so. Other errors (credentials) raise."""
        tried = asyncio.Event()
        task = asyncio.create_task(self._ensure_until_done(tried), name="ensure-bucket")
        waiting = asyncio.create_task(tried.wait())
        await asyncio.wait({task, waiting}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()
            return None
        return task

    async def _ensure_until_done(self, tried: asyncio.Event) -> None:
        delay = ENSURE_BACKOFF_S
        while True:
            try:
                await self.ensure_bucket()
            except StoreUnavailable as exc:
                if not tried.is_set():
                    log.warning("bucket %s: %s; going on without the object store, retrying", self.bucket, exc)
            except Exception as exc:
                if not tried.is_set():
                    raise  # misconfigured at start: fail the start as before
                log.error("bucket %s: %s; retrying", self.bucket, exc)
            else:
                if tried.is_set():
                    log.info("bucket %s: object store %s is back", self.bucket, self.endpoint)
                return
            finally:
                tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, ENSURE_MAX_BACKOFF_S)

    async def available(self) -> bool:
        """Whether the store answers and the bucket exists; probed with short timeouts, the
        answer reused for :data:`PROBE_CACHE_S` and shared by concurrent callers."""
        at, ok = self._probed
        if time.monotonic() - at < PROBE_CACHE_S:
            return ok
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> bool:
        try:
            ok = await self._run(self._probe_client.bucket_exists, self.bucket)
        except Exception as exc:
            log.debug("object store probe: %s", exc)
            ok = False
        self._probed = (time.monotonic(), ok)
        return ok

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
        await self._run(
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
        await self._run(self._client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                        content_type=content_type)
        return _artifact_ref(bucket=self.bucket, key=key, name=name, size=len(data), sha256=digest,
                             content_type=content_type)

    async def get(self, key: str) -> bytes:
        """Whole object in memory; use get_file for large objects."""
        return await self._run(self._get_sync, key, key=key)

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
        sha256, size_bytes = await asyncio.to_thread(file_sha256, Path(path))
        await self._run(
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
        await self._run(self._client.fget_object, self.bucket, key, str(path), key=key)
        return path

    # ------------------------------------------------------------------ urls and cleanup

    async def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A GET URL a client can fetch without credentials until it expires. Signing is local,
        but a link into a store that does not answer is no use: StoreUnavailable then."""
        if not await self.available():
            raise StoreUnavailable(f"object store {self.endpoint} is not answering")
        return await self._run(
            self._client.presigned_get_object,
            self.bucket,
            key,
            expires=timedelta(seconds=expires_s),
        )

    async def presigned_put_url(self, key: str, expires_s: int = 3600) -> str:
        """A PUT URL a worker outside dualplane uploads one object with (an external node's output)."""
        if not await self.available():
            raise StoreUnavailable(f"object store {self.endpoint} is not answering")
        return await self._run(self._client.presigned_put_object, self.bucket, _check_key(key),
                               expires=timedelta(seconds=expires_s))

    async def describe(self, key: str, name: str) -> dict[str, Any]:
        """The artifact reference of an object someone else uploaded (a presigned PUT): its
        bytes are read once to hash them. ObjectNotFound when nothing is there."""
        return await self._run(self._describe_sync, key, name, key=key)

    def _describe_sync(self, key: str, name: str) -> dict[str, Any]:
        response = self._client.get_object(self.bucket, key)
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in response.stream(HASH_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
            content_type = response.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE
        finally:
            response.close()
            response.release_conn()
        return _artifact_ref(name=name, bucket=self.bucket, key=key, size=size, sha256=digest.hexdigest(),
                             content_type=content_type)

    async def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, in key order."""
        return await self._run(self._keys_sync, prefix)

    def _keys_sync(self, prefix: str) -> list[str]:
        return [obj.object_name for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name is not None]

    async def delete(self, key: str) -> None:
        """Delete one object (a missing one is no error: S3 deletes are idempotent)."""
        await self._run(self._client.remove_object, self.bucket, _check_key(key))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (e.g. `jobs/<job>/`); returns how many were deleted."""
        return await self._run(self._delete_prefix_sync, prefix)

    def _delete_prefix_sync(self, prefix: str) -> int:
        names = self._keys_sync(prefix)
        if not names:
            return 0
        errors = list(self._client.remove_objects(self.bucket, [DeleteObject(n) for n in names]))
        if errors:
            raise RuntimeError(
                f"failed to delete {len(errors)} objects under {prefix!r}: {errors[:3]}"
            )
        return len(names)


def store_from_settings(store: StoreSettings) -> ArtifactStore | None:
    """The artifact store the settings' store group describes, or None when no S3 endpoint is configured."""
    if not store.s3_endpoint:
        return None
    return ArtifactStore(
        endpoint=store.s3_endpoint,
        access_key=store.s3_access_key or "",
        secret_key=store.s3_secret_key or "",
        bucket=store.s3_bucket,
        secure=store.s3_secure,
        connect_timeout_s=store.s3_connect_timeout_s,
        read_timeout_s=store.s3_read_timeout_s,
        retries=store.s3_retries,
    )
