"""Task inputs named by object-store keys or http(s) URLs (training images, voice clips),
fetched together rather than one round trip after another."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import httpx

from dualplane.common.errors import TransientError

#: Inputs fetched at once per task (a training set may name hundreds).
MAX_PARALLEL_FETCHES = 8
URL_TIMEOUT_S = 60.0


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
) -> list[bytes]:
    """Bytes of every ref, in order: keys through ``get_object``, URLs over HTTP.

    A URL's 4xx, or a body over ``max_bytes``, is a ValueError naming the input (bad
    input: no retry); its 5xx, 429 or a transport failure is a :class:`TransientError`.
    """
    slots = asyncio.Semaphore(MAX_PARALLEL_FETCHES)

    async def one(client: httpx.AsyncClient | None, index: int, ref: str) -> bytes:
        async with slots:
            if client is None or not is_url(ref):
                return await get_object(ref)
            return await _download(client, ref, max_bytes, f"{what} {index} ({shown(ref)})")

    if not any(is_url(ref) for ref in refs):
        return list(await asyncio.gather(*(one(None, i, ref) for i, ref in enumerate(refs))))
    async with httpx.AsyncClient(timeout=URL_TIMEOUT_S, follow_redirects=True) as client:
        return list(await asyncio.gather(*(one(client, i, ref) for i, ref in enumerate(refs))))


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int, label: str) -> bytes:
    try:
        async with client.stream("GET", url) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"{label}: HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ValueError(f"{label}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ValueError(f"{label} is larger than {max_bytes} bytes")
            return bytes(body)
    except httpx.TransportError as exc:
        raise TransientError(f"{label}: {type(exc).__name__}: {exc}") from None
