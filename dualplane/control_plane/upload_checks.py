"""What an upload is: its declared type checked against its bytes, and the facts a preview needs.

Only the types the tasks take are accepted (audio clips, images, text), and the first bytes must
be what the declared type says: a renamed executable or a PNG sent as ``audio/wav`` is refused
before it is stored, with a message saying what was declared and what was found. The facts
(a WAV's duration, an image's size) are read from the headers alone, with the standard library:
the control plane imports neither Pillow nor an audio stack for this.
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

from dualplane.common.media_types import ALLOWED_TYPES, EXTENSION_TYPES

#: Content types that say nothing about the file (curl's default, a browser's unknown).
_UNDECLARED = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded"})
#: Formats, by the family each declared type belongs to.
_FAMILY = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "audio/opus": "ogg",
    "audio/flac": "flac", "audio/x-flac": "flac", "audio/webm": "webm",
    "image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "text/plain": "text",
}
_FAMILY_NAMES = {
    "wav": "WAV audio (audio/wav)", "mp3": "MP3 audio (audio/mpeg)", "ogg": "Ogg audio (audio/ogg)",
    "flac": "FLAC audio (audio/flac)", "webm": "WebM (audio/webm)", "png": "a PNG image (image/png)",
    "jpeg": "a JPEG image (image/jpeg)", "webp": "a WebP image (image/webp)", "text": "UTF-8 text (text/plain)",
    "gif": "a GIF image (image/gif)", "pdf": "a PDF document (application/pdf)",
    "zip": "a ZIP archive (application/zip)", "elf": "an ELF executable", "exe": "a Windows executable",
    "mp4": "an MP4/QuickTime file (video/mp4)", "gzip": "gzip data (application/gzip)",
}
#: Text uploads are lyrics: printable UTF-8; these are the only control characters allowed.
_TEXT_CONTROLS = frozenset("\t\n\r\f")


class UploadRefused(ValueError):
    """An upload whose type is not accepted or whose bytes are not what it declares (HTTP 415)."""


@dataclass(frozen=True)
class Inspected:
    """What an accepted upload is."""

    content_type: str
    kind: str
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None


def declared_type(header: str | None, name: str) -> str:
    """The upload's type: the Content-Type without parameters, lower case; from the name's
    extension (:data:`EXTENSION_TYPES`) when the header names no type (a bare ``curl --data-binary``)."""
    declared = (header or "").split(";", 1)[0].strip().lower()
    if declared in _UNDECLARED:
        dot = name.rfind(".")
        return EXTENSION_TYPES.get(name[dot:].lower(), declared or "application/octet-stream") if dot >= 0 \
            else declared or "application/octet-stream"
    return declared


def inspect_upload(data: bytes, content_type: str) -> Inspected:
    """Check ``data`` against its declared ``content_type`` (see :func:`declared_type`) and read
    its facts; raise :class:`UploadRefused` for a type that is not accepted or bytes that are
    something else."""
    kind = ALLOWED_TYPES.get(content_type)
    if kind is None:
        accepted = ", ".join(sorted(ALLOWED_TYPES))
        raise UploadRefused(f"declared type {content_type!r} is not accepted; accepted types: {accepted}")
    family = _FAMILY[content_type]
    found = sniff(data)
    if found != family:
        raise UploadRefused(f"declared {content_type}, but the bytes are {_describe(found, data)}")
    if kind == "audio":
        return Inspected(content_type, kind, duration_s=wav_duration_s(data) if family == "wav" else None)
    if kind == "image":
        width, height = image_size(data, family)
        return Inspected(content_type, kind, width=width, height=height)
    return Inspected(content_type, kind)


def sniff(data: bytes) -> str | None:
    """The format the first bytes say (a :data:`_FAMILY` value or another known one), None when
    unknown."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    # an ID3 tag, or an MPEG audio frame header: 11 sync bits and a layer that is not "reserved"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "mp3"
    for magic, family in ((b"GIF8", "gif"), (b"%PDF", "pdf"), (b"PK\x03\x04", "zip"), (b"\x7fELF", "elf"),
                          (b"\x1f\x8b", "gzip")):
        if head.startswith(magic):
            return family
    if head[4:8] == b"ftyp":
        return "mp4"
    if _is_text(data):  # before the weakest magic: lyrics may well begin with "MZ"
        return "text"
    return "exe" if head[:2] == b"MZ" else None


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(ch.isprintable() or ch in _TEXT_CONTROLS for ch in text)


def _describe(family: str | None, data: bytes) -> str:
    if not data:
        return "empty"
    if family is None:
        return f"not a known format (first bytes {data[:8].hex(' ')})"
    return _FAMILY_NAMES[family]


def wav_duration_s(data: bytes) -> float | None:
    """A WAV's length from its header (None when the stdlib cannot read it: float or compressed
    samples, a truncated header)."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, frames = wav.getframerate(), wav.getnframes()
    except (wave.Error, EOFError, struct.error, ValueError):
        return None
    return round(frames / rate, 4) if rate > 0 else None


def image_size(data: bytes, family: str) -> tuple[int | None, int | None]:
    """(width, height) from a PNG, JPEG or WebP header; (None, None) when it cannot be read."""
    try:
        size = {"png": _png_size, "jpeg": _jpeg_size, "webp": _webp_size}[family](data)
    except (struct.error, IndexError):
        return None, None
    return size if size is not None else (None, None)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":  # IHDR is the first chunk, right after the signature
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length: SOI, TEM, RSTn
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: the key frame's start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: a 24-bit canvas size, minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None
