"""``/uploads``: accepted types only, bytes that are what they declare, the facts a preview needs,
and each user's uploads their own (listed, deleted and used by nobody else)."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import pytest

from dualplane.control_plane.upload_checks import image_size, sniff
from tests.helpers import wait_for_job, wav_bytes


def png_bytes(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + b"\x80\x20\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 (JFIF) segment, then a baseline frame header: what a JPEG begins with."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\1\1\0\0\1\0\1\0\0"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\1\x22\0\2\x11\1\3\x11\1"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def webp_lossless_header(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + bits.to_bytes(4, "little") + b"\0" * 8
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + b"VP8L" + struct.pack("<I", len(body)) + body


async def post(client: httpx.AsyncClient, name: str, data: bytes, content_type: str | None, **params: object
               ) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return await client.post("/uploads", params={"name": name, **params}, content=data, headers=headers)


async def test_accepted_types_are_stored_with_their_facts(api, control_plane):
    alice = api("alice")
    wav = await post(alice, "clip.wav", wav_bytes(1.5), "audio/wav", consent="true")
    png = await post(alice, "face.png", png_bytes(7, 5), "image/png")
    jpeg = await post(alice, "photo.jpg", jpeg_header(640, 480), "image/jpeg")
    webp = await post(alice, "pic.webp", webp_lossless_header(300, 200), "image/webp")
    lyrics = await post(alice, "words.txt", "Verse one\nla la là\n".encode(), "text/plain; charset=utf-8")
    for response in (wav, png, jpeg, webp, lyrics):
        assert response.status_code == 201, response.text

    clip = wav.json()
    assert clip["kind"] == "audio" and clip["content_type"] == "audio/wav" and clip["duration_s"] == 1.5
    assert clip["consent"] is True and clip["width"] is None and clip["size"] == len(wav_bytes(1.5))
    assert clip["key"] == f"uploads/alice/{clip['sha256']}/clip.wav" and clip["name"] == "clip.wav"
    assert isinstance(clip["created_at"], float)
    async with httpx.AsyncClient() as http:  # the url is a working presigned GET of the bytes
        assert (await http.get(clip["url"])).content == wav_bytes(1.5)
    assert (png.json()["kind"], png.json()["width"], png.json()["height"]) == ("image", 7, 5)
    assert (jpeg.json()["width"], jpeg.json()["height"]) == (640, 480)
    assert (webp.json()["width"], webp.json()["height"]) == (300, 200)
    assert lyrics.json()["kind"] == "text" and lyrics.json()["content_type"] == "text/plain"
    assert lyrics.json()["consent"] is False and lyrics.json()["duration_s"] is None

    record = await control_plane.uploads.get("alice", clip["key"])
    assert record is not None and record.consent is True and record.kind == "audio"
    assert await control_plane.uploads.get("bob", clip["key"]) is None


def test_real_encoders_images_are_measured():
    image = pytest.importorskip("PIL.Image")
    for fmt, family, options in (("JPEG", "jpeg", {"progressive": True}), ("WEBP", "webp", {"lossless": False}),
                                 ("WEBP", "webp", {"lossless": True}), ("PNG", "png", {})):
        buf = io.BytesIO()
        image.new("RGB", (123, 45), (200, 10, 10)).save(buf, fmt, **options)
        assert sniff(buf.getvalue()) == family
        assert image_size(buf.getvalue(), family) == (123, 45), (fmt, options)


async def test_a_type_not_accepted_or_bytes_of_another_type_are_415(api):
    alice = api("alice")
    refused = {
        "pdf": await post(alice, "doc.pdf", b"%PDF-1.7\n...", "application/pdf"),
        "png as wav": await post(alice, "clip.wav", png_bytes(2, 2), "audio/wav"),
        "wav as png": await post(alice, "face.png", wav_bytes(0.1), "image/png"),
        "elf as text": await post(alice, "words.txt", b"\x7fELF\2\1\1\0" + b"\0" * 40, "text/plain"),
        "binary as text": await post(alice, "words.txt", bytes(range(256)), "text/plain"),
        "riff without wave": await post(alice, "clip.wav", b"RIFF....", "audio/wav"),
        "no type": await post(alice, "clip", wav_bytes(0.1), None),
    }
    for what, response in refused.items():
        assert response.status_code == 415, (what, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["title"] == "Unsupported upload", what
    assert refused["png as wav"].json()["detail"] == "declared audio/wav, but the bytes are a PNG image (image/png)"
    assert refused["wav as png"].json()["detail"] == "declared image/png, but the bytes are WAV audio (audio/wav)"
    assert "ELF" in refused["elf as text"].json()["detail"]
    assert "'application/pdf' is not accepted" in refused["pdf"].json()["detail"]
    assert (await alice.get("/uploads")).json() == {"uploads": []}  # nothing refused was kept


async def test_without_a_content_type_the_extension_declares_it(api):
    response = await post(api("alice"), "clip.wav", wav_bytes(0.25), None)
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "audio/wav" and response.json()["duration_s"] == 0.25


async def test_oversize_is_413_and_bad_names_or_empty_bodies_422(api, settings, control_plane, authenticator):
    from dualplane.control_plane import create_app

    small = settings.model_copy(update={"max_upload_bytes": 64 * 1024})
    app = create_app(small, plane=control_plane, authenticator=authenticator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp",
                                 headers={"Authorization": f"Bearer {authenticator.mint('alice')}"}) as alice:
        big = await post(alice, "long.wav", wav_bytes(10), "audio/wav")
        assert big.status_code == 413 and big.headers["content-type"] == "application/problem+json", big.text
        assert (await post(alice, "short.wav", wav_bytes(1), "audio/wav")).status_code == 201
        for name, data in (("../x.wav", wav_bytes(0.1)), ("..", wav_bytes(0.1)), ("a/b.wav", wav_bytes(0.1)),
                           ("empty.wav", b"")):
            response = await post(alice, name, data, "audio/wav")
            assert response.status_code == 422, (name, response.text)
        assert [u["name"] for u in (await alice.get("/uploads")).json()["uploads"]] == ["short.wav"]


async def test_list_is_newest_first_by_kind_and_delete_removes_bytes_and_record(api, control_plane):
    alice = api("alice")
    first = (await post(alice, "a.wav", wav_bytes(0.1), "audio/wav")).json()
    image = (await post(alice, "b.png", png_bytes(1, 1), "image/png")).json()
    last = (await post(alice, "c.wav", wav_bytes(0.2), "audio/wav")).json()

    listed = (await alice.get("/uploads")).json()["uploads"]
    assert [u["key"] for u in listed] == [last["key"], image["key"], first["key"]]
    assert all(u["url"].startswith("http") for u in listed)
    audio = (await alice.get("/uploads", params={"kind": "audio"})).json()["uploads"]
    assert [u["name"] for u in audio] == ["c.wav", "a.wav"]
    assert (await alice.get("/uploads", params={"kind": "video"})).status_code == 422

    gone = await alice.delete(f"/uploads/{first['sha256']}/a.wav")
    assert gone.status_code == 204, gone.text
    assert [u["name"] for u in (await alice.get("/uploads")).json()["uploads"]] == ["c.wav", "b.png"]
    assert await control_plane.artifacts.keys(f"uploads/alice/{first['sha256']}/") == []
    assert await control_plane.uploads.get("alice", first["key"]) is None
    again = await alice.delete(f"/uploads/{first['sha256']}/a.wav")
    assert again.status_code == 404 and again.headers["content-type"] == "application/problem+json"


async def test_another_user_cannot_list_delete_or_use_an_upload(api, control_plane):
    alice, bob = api("alice"), api("bob")
    clip = (await post(alice, "secret.wav", wav_bytes(0.5), "audio/wav", consent="true")).json()
    assert (await bob.get("/uploads")).json() == {"uploads": []}

    refused = await bob.delete(f"/uploads/{clip['sha256']}/secret.wav")
    assert refused.status_code == 404
    assert await control_plane.artifacts.get(clip["key"]) == wav_bytes(0.5)  # still there
    assert [u["key"] for u in (await alice.get("/uploads")).json()["uploads"]] == [clip["key"]]

    mix = {"nodes": [{"id": "mix", "task": "mix_audio", "plane": "control",
                      "params": {"bed": clip["key"], "voice": clip["key"]}}]}
    theirs = await bob.post("/jobs", json=mix)
    assert theirs.status_code == 422 and theirs.json()["node_errors"]["mix"][0]["field"] == "params.bed"
    mine = await alice.post("/jobs", json=mix)  # the owner's job reads it
    assert mine.status_code == 201, mine.text
    assert (await wait_for_job(control_plane, mine.json()["id"], timeout_s=60)).status == "succeeded"
