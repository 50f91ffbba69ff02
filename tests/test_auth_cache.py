"""The verified-token cache of the Authenticator: a token is decoded once, yet its expiry and
its revocation are checked on every use, and the cache stays bounded."""

from __future__ import annotations

import time

import jwt
import pytest

from dualplane.control_plane import auth
from dualplane.control_plane.auth import Authenticator, AuthError

SECRET = "auth-cache-test-secret-of-at-least-thirty-two-bytes"


class Markers:
    """A Revocations stand-in: users disabled, and the generation below which tokens are revoked."""

    def __init__(self) -> None:
        self.disabled: set[str] = set()
        self.min_generation: dict[str, int] = {}
        self.checked: list[tuple[str, int | None]] = []

    async def refresh_if_stale(self) -> None:
        pass

    def check(self, user: str, generation: int | None) -> None:
        self.checked.append((user, generation))
        if user in self.disabled:
            raise AuthError("account disabled")
        if (generation or 0) < self.min_generation.get(user, 0):
            raise AuthError("token revoked")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens jwt.decode was called with."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


def test_a_token_is_decoded_once_and_answers_the_same_principal(decodes: list[str]):
    authenticator = Authenticator(algorithm="HS256", secret=SECRET)
    token = authenticator.mint("alice", "admin", generation=3)
    first, second = authenticator.verify(token), authenticator.verify(token)
    assert first == second and first.user == "alice" and first.role == "admin"
    assert decodes == [token]


def test_a_cached_token_of_a_disabled_or_revoked_account_is_refused(decodes: list[str]):
    authenticator = Authenticator(algorithm="HS256", secret=SECRET)
    markers = Markers()
    authenticator.revocations = markers
    token = authenticator.mint("alice", generation=2)
    assert authenticator.verify(token).user == "alice"
    markers.disabled.add("alice")
    with pytest.raises(AuthError, match="account disabled"):
        authenticator.verify(token)
    markers.disabled.clear()
    markers.min_generation["alice"] = 3  # a password reset: generation 2 is revoked
    with pytest.raises(AuthError, match="token revoked"):
        authenticator.verify(token)
    assert markers.checked == [("alice", 2)] * 3  # the cached generation is the token's
    assert decodes == [token]


async def test_authenticate_checks_revocation_on_a_cached_token():
    authenticator = Authenticator(algorithm="HS256", secret=SECRET)
    markers = Markers()
    authenticator.revocations = markers
    token = authenticator.mint("bob")
    assert (await authenticator.authenticate(token)).user == "bob"
    markers.disabled.add("bob")
    with pytest.raises(AuthError, match="account disabled"):
        await authenticator.authenticate(token)


class Clock:
    """Stands for the ``time`` module in ``auth`` (PyJWT keeps its own clock)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_a_cached_token_is_refused_once_it_expires(monkeypatch: pytest.MonkeyPatch, decodes: list[str]):
    authenticator = Authenticator(algorithm="HS256", secret=SECRET)
    token = authenticator.mint("alice", ttl_s=60)
    principal = authenticator.verify(token)
    assert principal.expires_at is not None
    monkeypatch.setattr(auth, "time", Clock(principal.expires_at - 0.5))
    assert authenticator.verify(token) == principal
    monkeypatch.setattr(auth, "time", Clock(principal.expires_at))  # exp reached: expired, as PyJWT has it
    with pytest.raises(AuthError, match="token expired"):
        authenticator.verify(token)
    assert len(authenticator.verified) == 0  # dropped from the cache
    assert decodes == [token]


def test_an_altered_or_foreign_token_is_not_served_from_the_cache():
    authenticator = Authenticator(algorithm="HS256", secret=SECRET)
    token = authenticator.mint("alice")
    authenticator.verify(token)
    head, payload, signature = token.split(".")
    altered = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(AuthError, match="invalid token"):
        authenticator.verify(altered)
    foreign = Authenticator(algorithm="HS256", secret=SECRET[::-1]).mint("alice")
    with pytest.raises(AuthError, match="invalid token"):
        authenticator.verify(foreign)
    assert len(authenticator.verified) == 1  # refusals are not kept


def test_the_cache_is_bounded_and_drops_expired_tokens_first(monkeypatch: pytest.MonkeyPatch, decodes: list[str]):
    authenticator = Authenticator(algorithm="HS256", secret=SECRET, cache_size=2)
    short, kept, third, fourth = (authenticator.mint(user, ttl_s=ttl) for user, ttl in
                                  (("a", 5), ("b", 3600), ("c", 3600), ("d", 3600)))
    authenticator.verify(short)
    authenticator.verify(kept)
    monkeypatch.setattr(auth, "time", Clock(time.time() + 10))  # `short` has expired by now
    authenticator.verify(third)
    assert len(authenticator.verified) == 2
    decodes.clear()
    authenticator.verify(kept)  # still cached: the expired token made room
    authenticator.verify(third)
    assert decodes == []
    authenticator.verify(fourth)  # full of live tokens: the oldest (`kept`) goes
    assert len(authenticator.verified) == 2
    decodes.clear()
    authenticator.verify(third)
    authenticator.verify(kept)
    assert decodes == [kept]
