"""Accounts: users and service accounts in Redis, their argon2id password hashes, their refresh
sessions, and the revocation markers every token check reads (kept by the bridge's account store,
``common/bridge/accounts.py``).

An account is a name (a user id: it becomes the ``sub`` of its tokens), a role, an argon2id hash
(``argon2-cffi``'s defaults, RFC 9106's second recommendation: 64 MiB, 3 passes), a disabled flag,
its creation and update times, and a token generation ``gen``. Disabling the account, resetting
its password and a reused refresh token raise ``gen`` and drop every refresh session; the access
tokens of older generations are refused once the revocation markers are re-read (see
:class:`RevocationView` and ``auth.py``). A service account is an account of role
``orchestrator``.

Refresh tokens are ``<session id>.<secret>``: random, opaque to the client, and only the
secret's SHA-256 is stored, in the session's hash (TTL ``refresh_token_ttl_s``, started again at
each use). Each use rotates the secret; presenting one that is no longer the session's current
secret means two parties hold the session's tokens (a theft, or a client that refreshed twice at
once), and the account is revoked as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel

from dualplane.common.bridge import Bridge
from dualplane.common.errors import DualplaneError, Unavailable
from dualplane.control_plane.auth import ROLES, AuthError, valid_user_id

log = logging.getLogger("dualplane.accounts")

#: Passwords shorter than this are refused when set (a login takes any length up to the cap).
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
#: Hashes computed at once: each holds 64 MiB and a core for about 0.1 s, so a burst of logins
#: queues here instead of taking the memory and the CPU the API needs.
HASH_CONCURRENCY = 4
_REFRESH_TOKEN = re.compile(r"([0-9a-f]{32})\.([A-Za-z0-9_-]{43})")


class Account(BaseModel):
    """An account as the API and the CLI show it (never its hash)."""

    name: str
    role: str
    disabled: bool = False
    generation: int = 0
    created_at: float
    updated_at: float


class AccountError(DualplaneError, ValueError):
    """An account command that cannot be done (unknown or existing name, weak password, bad role)."""


class RefreshRefused(AuthError):
    """A refresh token that is malformed, expired, revoked or reused (HTTP 401)."""


class AccountStore:
    """Accounts, password checks and refresh sessions on the plane's Redis.

    :param bridge: a connected (or soon connected) bridge: it keeps the records.
    :param refresh_ttl_s: lifetime of a refresh session after its last use.
    """

    def __init__(self, bridge: Bridge, *, refresh_ttl_s: int, hasher: PasswordHasher | None = None) -> None:
        self.bridge = bridge
        self.refresh_ttl_s = refresh_ttl_s
        self.hasher = hasher or PasswordHasher()
        self._hashing = asyncio.Semaphore(HASH_CONCURRENCY)
        self._dummy_hash: str | None = None

    # -- accounts --------------------------------------------------------------------

    async def add(self, name: str, password: str, role: str = "user") -> Account:
        if not valid_user_id(name):
            raise AccountError(f"{name!r} is not a valid account name (1-128 of A-Z a-z 0-9 @ . _ + | = -)")
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        password_hash = await self._hash(_checked_password(password))
        now = time.time()
        fields: dict[str, Any] = {"role": role, "hash": password_hash, "disabled": 0, "gen": 0,
                                  "created_at": now, "updated_at": now}
        if not await self.bridge.add_account(name, fields):
            raise AccountError(f"account {name!r} exists already")
        return _account(name, fields)

    async def get(self, name: str) -> Account | None:
        found = await self._record(name)
        return found[0] if found else None

    async def list(self) -> list[Account]:
        """Every account, by name."""
        return [_account(name, fields) for name, fields in await self.bridge.all_account_fields()]

    async def set_disabled(self, name: str, disabled: bool) -> Account:
        """Disabling revokes: enabling the account again does not bring its old tokens back."""
        return await self._update(name, {"disabled": int(disabled)}, revoke=disabled)

    async def reset_password(self, name: str, password: str) -> Account:
        password_hash = await self._hash(_checked_password(password))
        return await self._update(name, {"hash": password_hash}, revoke=True)

    async def revoke(self, name: str) -> Account:
        """End every session and every access token of the account (within the check interval)."""
        return await self._update(name, {}, revoke=True)

    async def check_password(self, name: str, password: str) -> Account | None:
        """The account when the password is its own; None otherwise. An unknown name is checked
        against a dummy hash, so that a failure takes the same time whether the account exists."""
        found = await self._record(name) if valid_user_id(name) else None
        if found is None:
            await self._verify(await self._dummy(), password)
            return None
        account, password_hash = found
        if not await self._verify(password_hash, password):
            return None
        if self.hasher.check_needs_rehash(password_hash):  # the hasher's parameters were raised since
            await self.bridge.set_account_hash(name, await self._hash(password))
        return account

    # -- refresh sessions ------------------------------------------------------------

    async def open_session(self, account: Account) -> str:
        """A new refresh session of the account; its first refresh token."""
        session_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
        await self.bridge.open_refresh_session(session_id, user=account.name, generation=account.generation,
                                               secret_digest=_digest(secret), ttl_s=self.refresh_ttl_s)
        return f"{session_id}.{secret}"

    async def rotate_session(self, token: str) -> tuple[Account, str]:
        """The account of a refresh token and the session's next token; the presented one is
        spent. Raises :class:`RefreshRefused`; a spent token revokes the account."""
        session_id, secret = _parse_refresh(token)
        next_secret = secrets.token_urlsafe(32)

        async def still_valid(name: str, generation: int) -> Account | None:
            account = await self.get(name)
            if account is None or account.disabled or account.generation != generation:
                return None
            return account

        outcome, name, account = await self.bridge.rotate_refresh_session(
            session_id, secret_digest=_digest(secret), next_digest=_digest(next_secret), ttl_s=self.refresh_ttl_s,
            accept=still_valid)
        if outcome == "gone":
            raise RefreshRefused("refresh token expired or revoked")
        if outcome == "spent":
            log.warning("a spent refresh token of %r was presented again: revoking the account", name)
            with contextlib.suppress(AccountError):  # an account removed by hand: nothing to revoke
                await self.revoke(name)
            raise RefreshRefused("refresh token was already used: every session of this account "
                                 "is revoked, sign in again")
        if account is None:
            raise RefreshRefused("refresh token revoked")
        return account, f"{session_id}.{next_secret}"

    async def close_session(self, token: str) -> None:
        """End the session of a refresh token (logout); a token that is not its session's
        current one, or not one at all, changes nothing."""
        match = _REFRESH_TOKEN.fullmatch(token)
        if match is None:
            return
        session_id, secret = match.groups()
        await self.bridge.close_refresh_session(session_id, _digest(secret))

    # -- plumbing --------------------------------------------------------------------

    async def _record(self, name: str) -> tuple[Account, str] | None:
        fields = await self.bridge.account_fields(name)
        if fields is None:
            return None
        return _account(name, fields), fields["hash"]

    async def _update(self, name: str, changes: Mapping[str, Any], *, revoke: bool) -> Account:
        """Change the account's fields; with ``revoke``, raise its generation and end its sessions."""
        updated = await self.bridge.update_account(name, changes, revoke=revoke)
        if updated is None:
            raise AccountError(f"no account {name!r}")
        return _account(name, updated)

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            try:
                return await asyncio.to_thread(self.hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    async def _dummy(self) -> str:
        """A hash of nothing anyone knows, with the hasher's parameters (made once)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash


class RevocationView:
    """The revocation markers of every account, as :class:`~.auth.Authenticator` checks them.

    Checking a token reads a dict. The markers are re-read when they are older than
    ``check_s``, by the first request after that (the others wait for the same read): one GET
    of a version counter, and only when it changed, the markers hash. So a revocation takes
    effect in every control plane within ``check_s``, and the hot path costs no Redis call.
    Until the first read succeeds every token is refused with a 503.
    """

    def __init__(self, bridge: Bridge, *, check_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bridge = bridge
        self.check_s = check_s
        self._clock = clock
        self._markers: dict[str, tuple[int, bool]] | None = None
        self._version: bytes | None = None
        self._fresh_until = -math.inf
        self._reading: asyncio.Future[None] | None = None

    async def refresh_if_stale(self) -> None:
        if self._clock() < self._fresh_until:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)  # a caller that goes away does not cancel the others' read

    def check(self, user: str, generation: int | None) -> None:
        markers = self._markers
        if markers is None:
            raise Unavailable("account revocations are not loaded yet")
        marker = markers.get(user)
        if marker is None:
            return
        current, disabled = marker
        if disabled:
            raise AuthError("account disabled")
        if (generation or 0) < current:
            raise AuthError("token revoked (sign in again)")

    async def _read(self) -> None:
        started = self._clock()
        version = await self.bridge.revocation_version()
        if self._markers is None or version != self._version:
            self._version, self._markers = await self.bridge.revocation_markers()
        self._fresh_until = started + self.check_s


def _account(name: str, fields: Mapping[Any, object]) -> Account:
    return Account(name=name, role=str(fields["role"]), disabled=str(fields["disabled"]) == "1",
                   generation=int(str(fields["gen"])), created_at=float(str(fields["created_at"])),
                   updated_at=float(str(fields["updated_at"])))


def _checked_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    return password


def _parse_refresh(token: str) -> tuple[str, str]:
    match = _REFRESH_TOKEN.fullmatch(token)
    if match is None:
        raise RefreshRefused("invalid refresh token")
    session_id, secret = match.groups()
    return session_id, secret


def _digest(secret: str) -> str:
    """Refresh secrets are 256 random bits: a plain hash is enough (no guessing to slow down)."""
    return hashlib.sha256(secret.encode()).hexdigest()
