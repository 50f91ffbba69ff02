"""Authentication (JWT via PyJWT, HS256 or RS256) and the access rules of the API.

Roles:

* ``user`` — submits jobs and sees, follows and cancels only its own;
* ``admin`` — sees and manages every job;
* ``orchestrator`` — a service account (a worker, an external reporter): reads and cancels
  any job and may submit on behalf of a user, but has no user preferences of its own.

User ids. A token's ``sub`` becomes the job owner and a part of Redis keys
(``jobs:user:<sub>``, ``prefs:<sub>``) and of object keys (``uploads/<sub>/...``), so it is
checked where it enters: 1 to 128 characters of letters, digits and ``@ . _ + | = -`` (which
covers e-mail addresses, UUIDs and provider ids such as ``auth0|1234``), no ``..``. A token
with any other ``sub`` — empty, blank, not a string, holding ``:`` or ``/`` or control
characters — is refused (401 ``invalid token: sub ...``) rather than rewritten, since a
rewritten id could collide with someone else's.

Accounts and revocation. ``POST /auth/login`` (``accounts.py``, ``routes_auth.py``) mints
ordinary tokens of this class with one more claim, ``gen``: the account's token generation,
which disabling the account, resetting its password or a reused refresh token raises. Every
check consults :attr:`Authenticator.revocations` (the markers of every account, re-read from
Redis at most every ``DUALPLANE_REVOCATION_CHECK_S``): a token whose ``sub`` names a disabled
account is refused, and so is one whose ``gen`` is below the account's. A token without ``gen``
(``dualplane token``, another minter holding the key) counts as generation 0: it keeps working
for a ``sub`` that has no account, and for one that has until that account's first revocation.

Verified tokens are cached (:class:`VerifiedTokens`): a request with a token seen before skips
the signature and the claims, never the expiry or the revocation markers, which are checked on
every request as they are for a new token.

OIDC (not built) plugs in here: an authenticator that verifies an identity provider's tokens
against its JWKS (PyJWT's ``PyJWKClient``; issuer and audience required), maps a claim (``sub``,
or ``email``) to the user id through :func:`valid_user_id`, and a groups or roles claim to
:data:`ROLES`, returning the same :class:`Principal`. ``Authenticator.authenticate`` would try
it for tokens whose ``iss`` is the provider's; the routes, the hub and the access rules stay as
they are, and revocation is then the provider's business (short-lived tokens).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from dualplane.common.errors import DualplaneError
from dualplane.common.settings import AuthSettings

ROLES = ("user", "admin", "orchestrator")
#: Roles that may act on any user's jobs.
PRIVILEGED = frozenset({"admin", "orchestrator"})
#: What a user id (a token's ``sub``) may look like (see the module docstring).
USER_ID_PATTERN = r"^[A-Za-z0-9@._+|=-]{1,128}$"
_USER_ID = re.compile(USER_ID_PATTERN)


def valid_user_id(user: object) -> bool:
    return isinstance(user, str) and _USER_ID.fullmatch(user) is not None and ".." not in user


class AuthError(DualplaneError):
    """A token is missing, malformed, expired or signed by someone else (HTTP 401)."""

    status = 401
    title = "Unauthorized"

    def problem_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(DualplaneError):
    """The principal is known but its role does not allow this (HTTP 403)."""

    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``user`` is the job owner id; ``role`` one of :data:`ROLES`;
    ``expires_at`` the token's ``exp`` (Unix time; a WebSocket is closed then)."""

    user: str
    role: str
    expires_at: float | None = None

    @property
    def privileged(self) -> bool:
        return self.role in PRIVILEGED

    def can_access(self, job_user: str | None) -> bool:
        """Whether this principal may see, follow or cancel a job owned by ``job_user``."""
        return self.privileged or (job_user is not None and job_user == self.user)


class Revocations(Protocol):
    """What a token check asks the account store (see the module docstring)."""

    async def refresh_if_stale(self) -> None:
        """Re-read the markers when they are older than the check interval."""

    def check(self, user: str, generation: int | None) -> None:
        """Raise :class:`AuthError` when tokens of ``user`` of that generation are revoked."""


class VerifiedTokens:
    """Tokens whose signature and claims were checked, each kept until its ``exp``.

    Keyed by the raw token (the signed bytes: another token is another key), holding the
    principal and the ``gen`` claim so that :meth:`Authenticator.verify` can still check
    expiry and revocation on every use. At most ``size`` tokens; when full, the expired ones
    go, then the oldest (a token that leaves is only verified again)."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[str, tuple[Principal, int | None]] = {}

    def get(self, token: str) -> tuple[Principal, int | None] | None:
        return self._entries.get(token)

    def put(self, token: str, principal: Principal, generation: int | None) -> None:
        if self.size <= 0:
            return
        if len(self._entries) >= self.size:
            now = time.time()
            for key in [k for k, (p, _) in self._entries.items() if (p.expires_at or 0) <= now]:
                del self._entries[key]
            while len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
        self._entries[token] = (principal, generation)

    def drop(self, token: str) -> None:
        self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    """Mints and verifies tokens.

    :param algorithm: ``HS256`` (``secret``) or ``RS256`` (``private_key`` signs,
        ``public_key`` verifies; either may be absent where it is not needed).
    :param issuer: ``iss`` claim written and required.
    :param ttl_s: default token lifetime.
    :param cache_size: verified tokens kept (:class:`VerifiedTokens`); 0: none.

    :attr:`revocations` is set by the accounts routes (``routes_auth.install_accounts``);
    without it no token is ever revoked.
    """

    def __init__(
        self,
        *,
        algorithm: str,
        secret: str | None = None,
        private_key: str | None = None,
        public_key: str | None = None,
        issuer: str = "dualplane",
        ttl_s: int = 12 * 3600,
        cache_size: int = 4096,
    ) -> None:
        if algorithm not in ("HS256", "RS256"):
            raise ValueError(f"unsupported JWT algorithm {algorithm!r} (HS256 or RS256)")
        if algorithm == "HS256" and not secret:
            raise ValueError("HS256 needs DUALPLANE_JWT_SECRET")
        if algorithm == "RS256" and not (private_key or public_key):
            raise ValueError("RS256 needs DUALPLANE_JWT_PUBLIC_KEY_FILE (and a private key to mint)")
        self.algorithm = algorithm
        self._signing_key = secret if algorithm == "HS256" else private_key
        self._verifying_key = secret if algorithm == "HS256" else public_key
        self.issuer = issuer
        self.ttl_s = ttl_s
        self.revocations: Revocations | None = None
        self.verified = VerifiedTokens(cache_size)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Authenticator:
        def read(path: str | None) -> str | None:
            return Path(path).read_text() if path else None

        return cls(
            algorithm=auth.jwt_algorithm, secret=auth.jwt_secret,
            private_key=read(auth.jwt_private_key_file), public_key=read(auth.jwt_public_key_file),
            issuer=auth.jwt_issuer, ttl_s=auth.token_ttl_s,
        )

    def mint(self, user: str, role: str = "user", *, ttl_s: int | None = None,
             generation: int | None = None) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if not valid_user_id(user):
            raise ValueError(f"user {user!r} is not a valid user id (1-128 of A-Z a-z 0-9 @ . _ + | = -)")
        if not self._signing_key:
            raise ValueError("this authenticator can only verify (no signing key configured)")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "role": role, "iss": self.issuer, "iat": now,
                                  "exp": now + (self.ttl_s if ttl_s is None else ttl_s)}
        if generation is not None:
            claims["gen"] = generation
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithm)

    async def authenticate(self, token: str) -> Principal:
        """:meth:`verify`, after bringing the revocation markers up to date: what the routes
        and the hub call (the markers are re-read once per interval, not per request)."""
        if self.revocations is not None:
            await self.revocations.refresh_if_stale()
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        """The token's principal (signature, expiry, claims, revocation by the markers as last
        read: see :meth:`authenticate`). A token verified before is not decoded again; its
        expiry and revocation are checked all the same."""
        cached = self.verified.get(token)
        if cached is None:
            principal, generation = self._decode(token)
            self.verified.put(token, principal, generation)
        else:
            principal, generation = cached
            if principal.expires_at is not None and time.time() >= principal.expires_at:  # as PyJWT: exp <= now
                self.verified.drop(token)
                raise AuthError("token expired")
        if self.revocations is not None:
            self.revocations.check(principal.user, generation)
        return principal

    def _decode(self, token: str) -> tuple[Principal, int | None]:
        """Signature and claims: the principal and the token's ``gen``."""
        try:
            claims = jwt.decode(
                token, self._verifying_key, algorithms=[self.algorithm], issuer=self.issuer,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        role = claims.get("role", "user")
        if role not in ROLES:
            raise AuthError(f"invalid token: unknown role {role!r}")
        sub = claims["sub"]
        if not valid_user_id(sub):
            raise AuthError(f"invalid token: sub {_shown(sub)} is not a valid user id "
                            "(1-128 of A-Z a-z 0-9 @ . _ + | = -)")
        generation = claims.get("gen")
        if generation is not None and (type(generation) is not int or generation < 0):
            raise AuthError(f"invalid token: gen {_shown(generation)} is not a generation")
        return Principal(user=sub, role=role, expires_at=float(claims["exp"])), generation


def _shown(value: object) -> str:
    """A claim for an error message: short, and printable whatever it holds."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        raise AuthError("missing Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()
