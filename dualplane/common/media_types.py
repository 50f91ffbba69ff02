"""The types of files a user may upload, shared by the API's checks and the CLI's (which must
refuse a file before sending it, without importing the control plane)."""

from __future__ import annotations

#: Accepted content types → kind. Browsers name some formats more than one way (``audio/x-wav``,
#: ``audio/x-flac``, ``audio/mp3``), so each spelling is here.
ALLOWED_TYPES = {
    "audio/wav": "audio", "audio/x-wav": "audio", "audio/wave": "audio", "audio/vnd.wave": "audio",
    "audio/mpeg": "audio", "audio/mp3": "audio", "audio/ogg": "audio", "audio/opus": "audio",
    "audio/flac": "audio", "audio/x-flac": "audio", "audio/webm": "audio",
    "image/png": "image", "image/jpeg": "image", "image/webp": "image",
    "text/plain": "text",
}
#: The type a file name's extension stands for.
EXTENSION_TYPES = {
    ".wav": "audio/wav", ".wave": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/opus", ".flac": "audio/flac", ".weba": "audio/webm", ".webm": "audio/webm",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".txt": "text/plain",
}
