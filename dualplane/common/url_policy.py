"""Where a worker may connect to fetch a URL input.

URLs come from graphs, that is from users: without a check a graph could make a worker probe
loopback, the cluster's private networks or the cloud metadata service. :class:`UrlPolicy`
refuses those destinations unless they are allow-listed, and :class:`GuardedTransport` applies
it at connect time: it resolves the host itself, checks every address and connects to an address
it checked, so a DNS answer that changes between check and connect (rebinding) gains nothing,
and every redirect hop is a new connection that goes through the same check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

if typing.TYPE_CHECKING:
    from dualplane.common.settings import UrlFetchSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Default deadline of one URL input: connection, redirects and body together.
URL_DEADLINE_S = 60.0
MAX_REDIRECTS = 5

_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
# IPv6 forms that carry an IPv4 address a dual-stack host or a translator may end up dialling
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class DestinationDenied(ValueError):
    """A URL's host is (or resolves to) an address the policy refuses."""


def denial(address: Address) -> str | None:
    """Why ``address`` is refused by default, or None for a public address."""
    if address in _METADATA:
        return "cloud metadata service"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)) is not None:
        # Python 3.11 calls every ::ffff:a.b.c.d private, even a public a.b.c.d: judge the IPv4
        return denial(embedded)
    if address.is_link_local:
        return "link-local"
    if address in _CARRIER_GRADE_NAT:
        return "carrier-grade NAT"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _unwrapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a network (an address is a /32 or /128) or a host name, with an
    optional port."""

    network: Network | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """``10.0.0.0/8``, ``127.0.0.1:9000``, ``[::1]:9000``, ``files.internal``,
        ``files.internal:8080``."""
        entry = text.strip()
        try:
            return cls(network=ipaddress.ip_network(entry, strict=False))
        except ValueError:
            pass
        host, port = entry, None
        if entry.startswith("["):
            inner, closed, rest = entry[1:].partition("]")
            if not closed or not rest.startswith(":"):
                raise ValueError(f"url_fetch_allow entry {text!r}: expected [IPv6]:port")
            host, port = inner, rest[1:]
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        number = _port(port, text) if port is not None else None
        try:
            return cls(network=ipaddress.ip_network(host, strict=False), port=number)
        except ValueError:
            pass
        name = _normal_host(host)
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(f"url_fetch_allow entry {text!r}: not a network, address or host name")
        return cls(host=name, port=number)

    def matches(self, host: str, port: int, address: Address | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.host is not None:
            return _normal_host(host) == self.host
        return address is not None and self.network is not None and _unwrapped(address) in self.network


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"url_fetch_allow entry {entry!r}: bad port {text!r}")
    return int(text)


class UrlPolicy:
    """Public destinations, plus those ``allow`` names (see :meth:`AllowEntry.parse`).

    :param allow: allow-list entries; they exempt destinations from the default denial.
    :param deadline_s: time for one URL input in all: resolution, connections, redirects, body.
    :param max_redirects: redirect hops followed per URL.
    """

    def __init__(self, allow: Iterable[str] = (), *, deadline_s: float = URL_DEADLINE_S,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        self.allow = tuple(AllowEntry.parse(entry) for entry in allow)
        self.deadline_s = deadline_s
        self.max_redirects = max_redirects

    @classmethod
    def from_settings(cls, url_fetch: UrlFetchSettings) -> UrlPolicy:
        return cls(url_fetch.url_fetch_allow, deadline_s=url_fetch.url_fetch_timeout_s)

    def _allowed(self, host: str, port: int, address: Address | None) -> bool:
        return any(entry.matches(host, port, address) for entry in self.allow)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host:port``, every one of them checked; raises
        :class:`DestinationDenied` if any is refused (a name that resolves to a private address
        among public ones is suspect, not merely unlucky)."""
        if self._allowed(host, port, None):  # allowed by name: whatever it resolves to
            return await _getaddrinfo(host, port)
        literal = _literal(host)
        addresses = await _getaddrinfo(host, port)
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = denial(address)
            if reason is not None and not self._allowed(host, port, address):
                if literal:
                    raise DestinationDenied(f"destination {host} is not allowed ({reason})")
                # the category only: which internal address a name has is not the caller's business
                raise DestinationDenied(f"destination {host} is not allowed (it resolves to a {reason} address)")
        return addresses


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _getaddrinfo(host: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        failure: Exception | None = None
        for address in addresses:  # the checked ones only; TLS still names `host` (SNI, Host)
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise DestinationDenied("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool whose every connection asks ``policy`` first.
    No proxies, whatever the environment says: a proxy would connect on our behalf, unchecked."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=_GuardedBackend(policy),
            max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
