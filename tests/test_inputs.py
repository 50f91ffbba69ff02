"""Task inputs by object key or URL: fetched together, in order, with errors that name them."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.errors import TransientError
from dualplane.common.inputs import fetch_inputs


class _Handler(http.server.BaseHTTPRequestHandler):
    """/ok/<n> answers n bytes; /status/<code> answers that status."""

    def do_GET(self) -> None:
        kind, _, arg = self.path.split("?", 1)[0].strip("/").partition("/")
        if kind == "ok":
            body = b"x" * int(arg)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(int(arg))
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_keys_and_urls_come_back_in_the_order_given(artifact_store: ArtifactStore, web: str):
    first = (await artifact_store.put("j", "n", "a.bin", b"first", "application/octet-stream"))["key"]
    second = (await artifact_store.put("j", "n", "b.bin", b"second", "application/octet-stream"))["key"]
    refs = [second, f"{web}/ok/3", first, await artifact_store.presigned_url(first)]

    blobs = await fetch_inputs(refs, artifact_store.get, max_bytes=100, what="clip")

    assert blobs == [b"second", b"xxx", b"first", b"first"]


@pytest.mark.parametrize(("path", "error", "message"), [
    ("status/404", ValueError, "clip 1 (http://HOST/status/404): HTTP 404"),
    ("status/503", TransientError, "clip 1 (http://HOST/status/503): HTTP 503"),
    ("status/429", TransientError, "HTTP 429"),
    ("ok/101?token=secret", ValueError, "is larger than 100 bytes"),
])
async def test_bad_urls_fail_naming_the_input_and_saying_whether_to_retry(
    artifact_store: ArtifactStore, web: str, path: str, error: type[Exception], message: str
):
    key = (await artifact_store.put("j", "n", "a.bin", b"ok", "application/octet-stream"))["key"]

    with pytest.raises(error) as raised:
        await fetch_inputs([key, f"{web}/{path}"], artifact_store.get, max_bytes=100, what="clip")

    host = web.removeprefix("http://")
    assert message.replace("HOST", host) in str(raised.value)
    assert "secret" not in str(raised.value)  # a URL's query may carry a token


async def test_an_unreachable_url_is_transient():
    with pytest.raises(TransientError, match="image 0"):
        await fetch_inputs(["http://127.0.0.1:9/nothing"], _no_store, max_bytes=10, what="image")


async def _no_store(key: str) -> bytes:
    raise AssertionError("only URLs here")
