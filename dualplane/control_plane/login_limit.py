"""Login rate limiting: failed logins per account name and per client address, in Redis (so
every control plane counts the same failures), over a sliding window.

An attempt is counted *before* its password is checked, atomically with the check of the
limits (one script), and taken back when it succeeds: otherwise a burst of parallel guesses
would all pass the check before the first one failed. Past a limit the answer is a 429 with
``Retry-After`` (until the oldest failure in the window leaves it), and no hash is computed.

Anyone can make an account's logins wait by failing on purpose (the price of a per-name
limit); the per-address limit is what holds a guesser back across names. The address is the
one uvicorn reports: behind a reverse proxy, set ``DUALPLANE_FORWARDED_ALLOW_IPS`` to the proxy's so that
it is the client's. An IPv6 client counts by its /64, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
import math
import secrets

from dualplane.common.bridge import Bridge
from dualplane.common.bridge.limits import LoginCounter
from dualplane.common.errors import TooManyRequests
from dualplane.control_plane.auth import valid_user_id


class LoginThrottled(TooManyRequests):
    """Too many failed logins for this account or from this address (HTTP 429, Retry-After)."""

    title = "Too many failed logins"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class LoginLimiter:
    """:param per_user: failures per account name per window (0: no limit).
    :param per_ip: failures per client address per window (0: no limit)."""

    def __init__(self, bridge: Bridge, *, per_user: int, per_ip: int, window_s: float) -> None:
        self.bridge = bridge
        self.per_user, self.per_ip, self.window_s = per_user, per_ip, window_s

    async def attempt(self, name: str, client_host: str | None) -> Attempt:
        """Count a login attempt as a failure until :meth:`Attempt.succeeded` takes it back;
        raises :class:`LoginThrottled` past a limit."""
        limits: list[tuple[LoginCounter, int]] = []
        if self.per_user and valid_user_id(name):  # another name can be no account: nothing to protect
            limits.append((("user", name), self.per_user))
        if self.per_ip:
            limits.append((("ip", client_network(client_host)), self.per_ip))
        attempt = Attempt(self.bridge, [counter for counter, _ in limits], secrets.token_hex(8))
        if not limits:
            return attempt
        wait = await self.bridge.admit_login(limits, self.window_s, attempt.member)
        if wait > 0:
            raise LoginThrottled(max(1, math.ceil(wait)))
        return attempt


class Attempt:
    """One counted login attempt."""

    def __init__(self, bridge: Bridge, counters: list[LoginCounter], member: str) -> None:
        self.bridge, self.counters, self.member = bridge, counters, member

    async def succeeded(self) -> None:
        """A successful login is no failure."""
        if self.counters:
            await self.bridge.forget_login_failure(self.counters, self.member)


def client_network(host: str | None) -> str:
    """What the per-address limit counts by: the address, or an IPv6 address's /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # a test client or a Unix socket: not an address, still a client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
