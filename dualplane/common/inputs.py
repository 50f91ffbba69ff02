"""Task inputs named by object-store keys or http(s) URLs (training images, voice clips),
fetched together rather than one round trip after another.

URLs are fetched through :class:`~dualplane.common.url_policy.UrlPolicy`: private, loopback and
metadata destinations are refused unless allow-listed, on every redirect hop (followed here, not
by httpx, so each hop's scheme and destination are checked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import httpx

from dualplane.common.errors import TransientError
from dualplane.common.url_policy import DestinationDenied, GuardedTransport, UrlPolicy

#: Inputs fetched at once per task (a training set may name hundreds).
MAX_PARALLEL_FETCHES = 8
#: Public destinations only, no allow-list: what a plane gets unless its settings say more.
DEFAULT_POLICY = UrlPolicy()


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def shown(ref: str) -> str:
    """A reference for messages: URLs without their query (it may hold a token)."""
    return ref.split("?", 1)[0]


async def fetch_inputs(
    refs: Sequence[str],
    get_object: Callable[[str], Awaitable[bytes]],
    *,
    max_bytes: int,
    what: str = "input",
    policy: UrlPolicy | None = None,
) -> list[bytes]:
    """Bytes of every ref, in order: keys through ``get_object``, URLs over HTTP.

    A URL's 4xx, a body over ``max_bytes``, a refused destination (``policy``; public addresses
    only when None) or a redirect that cannot be followed is a ValueError naming the input (bad
    input: no retry); its 5xx, 429, a transport failure or the policy's deadline passing is a
    :class:`TransientError`.
    """
    policy = policy or DEFAULT_POLICY
    slots = asyncio.Semaphore(MAX_PARALLEL_FETCHES)

    async def one(client: httpx.AsyncClient | None, index: int, ref: str) -> bytes:
        async with slots:
            if client is None or not is_url(ref):
                return await get_object(ref)
            return await _download(client, ref, max_bytes, f"{what} {index} ({shown(ref)})", policy)

    if not any(is_url(ref) for ref in refs):
        return list(await asyncio.gather(*(one(None, i, ref) for i, ref in enumerate(refs))))
    async with httpx.AsyncClient(transport=GuardedTransport(policy), timeout=policy.deadline_s,
                                 follow_redirects=False, trust_env=False) as client:
        return list(await asyncio.gather(*(one(client, i, ref) for i, ref in enumerate(refs))))


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int, label: str, policy: UrlPolicy) -> bytes:
    try:
        async with asyncio.timeout(policy.deadline_s):
            return await _follow(client, httpx.URL(url), max_bytes, label, policy.max_redirects)
    except TimeoutError:
        raise TransientError(f"{label}: not downloaded within {policy.deadline_s:g} s") from None
    except httpx.InvalidURL as exc:
        raise ValueError(f"{label}: invalid URL: {exc}") from None


async def _follow(client: httpx.AsyncClient, url: httpx.URL, max_bytes: int, label: str, max_redirects: int) -> bytes:
    for hop in range(max_redirects + 1):
        where = f"redirected to {shown(str(url))}: " if hop else ""
        try:
            async with client.stream("GET", url) as response:
                if response.is_redirect:
                    url = _next_hop(response, label)
                    continue
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(f"{label}: {where}HTTP {response.status_code}")
                if not response.is_success:
                    raise ValueError(f"{label}: {where}HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ValueError(f"{label} is larger than {max_bytes} bytes")
                return bytes(body)
        except DestinationDenied as exc:
            raise ValueError(f"{label}: {where}{exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{label}: {where}{type(exc).__name__}: {exc}") from None
    raise ValueError(f"{label}: more than {max_redirects} redirects")


def _next_hop(response: httpx.Response, label: str) -> httpx.URL:
    target = response.url.join(response.headers["location"])
    if target.scheme not in ("http", "https"):
        raise ValueError(f"{label}: redirected to a {target.scheme or 'relative'} URL, which is not fetched")
    return target
