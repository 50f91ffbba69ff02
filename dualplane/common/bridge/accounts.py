"""The account store: accounts, refresh sessions and revocation markers as Redis keeps them.

What they mean (argon2id hashes, the password policy, token generations, what a reused refresh
token does) is ``control_plane/accounts.py``; this module keeps the records consistent: each
change that reads before it writes runs under WATCH, and is tried again when the keys changed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.replies import text

T = TypeVar("T")
#: What became of a refresh session presented for rotation (see :meth:`AccountOps.rotate_refresh_session`).
Rotation = Literal["gone", "spent", "refused", "rotated"]


class AccountOps(BridgeCore):
    # -- accounts ------------------------------------------------------------------------

    async def add_account(self, name: str, fields: Mapping[str, Any]) -> bool:
        """Store a new account; False when the name is taken (checked under WATCH)."""
        key = self.keys.account(name)
        async with self._transaction_client(key).pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.exists(key):
                    return False
                pipe.multi()
                pipe.hset(key, mapping=dict(fields))
                pipe.sadd(self.keys.accounts, name)
                await pipe.execute()
            except WatchError:  # another `add` of the same name won
                return False
        return True

    async def account_fields(self, name: str) -> dict[str, str] | None:
        """An account's fields, None when there is no such account."""
        return _account_fields(await self._redis.hgetall(self.keys.account(name)))

    async def all_account_fields(self) -> list[tuple[str, dict[str, str]]]:
        """Every account with its fields, by name."""
        names = sorted(text(n) for n in await self._redis.smembers(self.keys.accounts))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.account(name))
            records = await pipe.execute()
        return [(name, fields) for name, raw in zip(names, records, strict=True)
                if (fields := _account_fields(raw)) is not None]

    async def set_account_hash(self, name: str, password_hash: str) -> None:
        await self._redis.hset(self.keys.account(name), "hash", password_hash)

    async def update_account(self, name: str, changes: Mapping[str, Any], *, revoke: bool) -> dict[str, Any] | None:
        """Change an account's fields (and ``updated_at``); with ``revoke``, raise its generation
        ``gen`` and end its refresh sessions. The revocation marker every token check reads is
        written in the same transaction. Returns the account's fields, None when there is none."""
        key, sessions = self.keys.account(name), self.keys.refresh_sessions(name)
        async with self._transaction_client(key).pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key, sessions)
                    current = _account_fields(await pipe.hgetall(key))
                    if current is None:
                        return None
                    session_ids = [text(s) for s in await pipe.zrange(sessions, 0, -1)] if revoke else []
                    updated: dict[str, Any] = {**current, **changes, "updated_at": time.time()}
                    if revoke:
                        updated["gen"] = int(current["gen"]) + 1
                    generation, disabled = int(updated["gen"]), str(updated["disabled"]) == "1"
                    pipe.multi()
                    pipe.hset(key, mapping=updated)
                    if revoke:
                        pipe.delete(sessions, *(self.keys.refresh_session(s) for s in session_ids))
                    if generation > 0:  # generation 0 revokes nothing: no marker needed
                        pipe.hset(self.keys.auth_markers, name, f"{generation} {int(disabled)}")
                        pipe.incr(self.keys.auth_markers_version)
                    await pipe.execute()
                    return updated
                except WatchError:
                    continue

    # -- refresh sessions ----------------------------------------------------------------

    async def open_refresh_session(self, session_id: str, *, user: str, generation: int, secret_digest: str,
                                   ttl_s: int) -> None:
        now = time.time()
        key = self.keys.refresh_session(session_id)
        async with self._transaction_client(key).pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"user": user, "gen": generation, "current": secret_digest, "created_at": now})
            pipe.expire(key, ttl_s)
            _track(pipe, self.keys.refresh_sessions(user), session_id, now, ttl_s)
            await pipe.execute()

    async def rotate_refresh_session(
        self, session_id: str, *, secret_digest: str, next_digest: str, ttl_s: int,
        accept: Callable[[str, int], Awaitable[T | None]],
    ) -> tuple[Rotation, str, T | None]:
        """Spend the session's current secret (``secret_digest``) for the next one, under WATCH.
        ``accept(user, generation)`` says whether the session's account still takes it (None: no).
        Returns what happened, the session's user and what ``accept`` answered: ``gone`` (no such
        session: expired or revoked), ``spent`` (the digest is not the current one; nothing changed),
        ``refused`` (the session is deleted), ``rotated``."""
        key = self.keys.refresh_session(session_id)
        async with self._transaction_client(key).pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    record = await pipe.hgetall(key)
                    if not record:
                        return "gone", "", None
                    user = text(record[b"user"])
                    if not hmac.compare_digest(text(record[b"current"]), secret_digest):
                        await pipe.reset()
                        return "spent", user, None
                    accepted = await accept(user, int(record[b"gen"]))
                    if accepted is None:
                        await pipe.reset()
                        await self._redis.delete(key)
                        return "refused", user, None
                    pipe.multi()
                    pipe.hset(key, "current", next_digest)
                    pipe.expire(key, ttl_s)
                    _track(pipe, self.keys.refresh_sessions(user), session_id, time.time(), ttl_s)
                    await pipe.execute()
                    return "rotated", user, accepted
                except WatchError:
                    continue  # used at the same moment: the next pass sees a spent secret

    async def close_refresh_session(self, session_id: str, secret_digest: str) -> None:
        """End a session whose current secret this is; anything else changes nothing."""
        key = self.keys.refresh_session(session_id)
        record = await self._redis.hgetall(key)
        if record and hmac.compare_digest(text(record[b"current"]), secret_digest):
            async with self._transaction_client(key).pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(self.keys.refresh_sessions(text(record[b"user"])), session_id)
                await pipe.execute()

    # -- revocation markers --------------------------------------------------------------

    async def revocation_version(self) -> bytes | None:
        """The markers' version: it changes with every marker written."""
        version: bytes | None = await self._redis.get(self.keys.auth_markers_version)
        return version

    async def revocation_markers(self) -> tuple[bytes | None, dict[str, tuple[int, bool]]]:
        """The markers' version and, read with it, each marked account's (generation, disabled)."""
        async with self._transaction_client(self.keys.auth_markers).pipeline(transaction=True) as pipe:
            pipe.get(self.keys.auth_markers_version)
            pipe.hgetall(self.keys.auth_markers)
            version, raw = await pipe.execute()
        markers = {}
        for name, value in raw.items():
            generation, disabled = value.split()
            markers[text(name)] = (int(generation), disabled == b"1")
        return version, markers


def _account_fields(raw: Mapping[Any, Any]) -> dict[str, str] | None:
    """An account hash as text; None for one without a password hash (no account)."""
    if b"hash" not in raw:
        return None
    return {text(k): text(v) for k, v in raw.items()}


def _track(pipe: Pipeline, sessions: str, session_id: str, now: float, ttl_s: int) -> None:
    """Index a session under its account (for revocation), dropping the expired ones."""
    pipe.zadd(sessions, {session_id: now + ttl_s})
    pipe.zremrangebyscore(sessions, "-inf", now)
    pipe.expire(sessions, ttl_s)
