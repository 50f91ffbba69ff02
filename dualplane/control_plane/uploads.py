"""The per-user index of uploads: what ``POST /uploads`` stored, for listing, deleting and policy.

The bytes live in the object store under ``uploads/<user>/<sha256>/<name>``
(:meth:`~dualplane.common.artifacts.ArtifactStore.put_upload`); this index keeps one record per
key in a Redis hash per user, so listing a user's uploads never lists the bucket, and rules that
need to know about an upload (the consent a voice clip was uploaded with) read one field.
Keys uploaded before the index existed, or written by the planes themselves, have no record:
they are still readable by their user's jobs (see :mod:`dualplane.common.access`), only not listed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.bridge import Bridge

UploadKind = Literal["audio", "image", "text"]


class UploadRecord(BaseModel):
    """One upload as indexed (``POST /uploads`` answers it, with a presigned ``url`` added)."""

    model_config = ConfigDict(extra="ignore")  # records written by a newer plane still read
    key: str = Field(description="Object key to put in graph params: uploads/<user>/<sha256>/<name>.")
    name: str
    size: int = Field(ge=0)
    content_type: str
    sha256: str
    kind: UploadKind
    created_at: float = Field(description="Unix time in seconds of the (last) upload.")
    consent: bool = Field(False, description="The uploader declared consent to use the recording (voice cloning).")
    duration_s: float | None = Field(None, description="Audio length, where the format's header says it (WAV).")
    width: int | None = None
    height: int | None = None


class UploadIndex:
    """Records of each user's uploads, kept by the bridge (``<prefix>uploads:<user>``: key → record JSON).

    :param bridge: the plane's bridge (it connects at start, after this is made).
    """

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    async def put(self, user: str, record: UploadRecord) -> None:
        """Add or replace the record of ``record.key`` (the same bytes under the same name are one
        upload: uploading it again updates its time and consent)."""
        await self._bridge.put_upload_record(user, record.key, record.model_dump_json())

    async def get(self, user: str, key: str) -> UploadRecord | None:
        """The record of one of ``user``'s uploads; None when ``user`` has no upload ``key``."""
        raw = await self._bridge.upload_record(user, key)
        return UploadRecord.model_validate_json(raw) if raw is not None else None

    async def list(self, user: str, kind: UploadKind | None = None) -> list[UploadRecord]:
        """``user``'s uploads, newest first, optionally only one kind."""
        raw = await self._bridge.upload_records(user)
        records = [UploadRecord.model_validate_json(value) for value in raw]
        records = [r for r in records if kind is None or r.kind == kind]
        return sorted(records, key=lambda r: (r.created_at, r.key), reverse=True)

    async def remove(self, user: str, key: str) -> bool:
        """Forget one upload; False when ``user`` had none under ``key``."""
        return await self._bridge.remove_upload_record(user, key)
