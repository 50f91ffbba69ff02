"""The audio codec the tasks share: WAV out (16-bit PCM) and WAV in, resampled.

Audio in: WAV (PCM 8/16/24/32-bit or IEEE float), any rate, any channel count, read with the
standard ``wave`` module (and a small RIFF reader for the float/extensible formats it refuses),
mixed to mono, and resampled (``train_voice``: to SpeechT5's 16 kHz) with a windowed-sinc
(band-limited) interpolator.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import Any


def wav_bytes(samples: Any, sample_rate: int) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1] shaped (channels, n) (clipped outside)."""
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(pcm.T).tobytes())  # interleaved frames
    return buf.getvalue()


def decode_wav(data: bytes) -> tuple[Any, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a WAV file."""
    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw, is_float = w.readframes(w.getnframes()), False
    except (wave.Error, EOFError):  # float and WAVE_FORMAT_EXTENSIBLE files (wave reads PCM only)
        channels, width, rate, raw, is_float = _read_riff(data)
    if channels < 1 or rate <= 0:
        raise ValueError(f"bad WAV header ({channels} channels, {rate} Hz)")
    raw = raw[: len(raw) // (width * channels) * width * channels]
    if is_float:
        if width not in (4, 8):
            raise ValueError(f"unsupported float sample width {width}")
        samples = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
    elif width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample width {width}")
    if samples.size == 0:
        raise ValueError("WAV file has no samples")
    mono = samples.reshape(-1, channels).mean(axis=1)
    return np.clip(np.nan_to_num(mono), -1.0, 1.0).astype(np.float32), rate


def _read_riff(data: bytes) -> tuple[int, int, int, bytes, bool]:
    """(channels, sample width, rate, data bytes, is float) from the RIFF chunks of a WAV file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    pos, fmt, body = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunk = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = chunk
        elif chunk_id == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or body is None or len(fmt) < 16:
        raise ValueError("WAV file without fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with the tag
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag not in (1, 3):
        raise ValueError(f"unsupported WAV encoding (format tag {tag}); use PCM or IEEE float")
    return channels, bits // 8, rate, body, tag == 3


def resample(samples: Any, rate_in: int, rate_out: int, *, zero_crossings: int = 16) -> Any:
    """Band-limited resampling: windowed-sinc interpolation (Hann window, ``zero_crossings``
    on each side), low-passed at the lower of the two Nyquist frequencies."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32)
    ratio = rate_out / rate_in
    scale = min(1.0, ratio)  # cutoff as a fraction of the input Nyquist
    half = zero_crossings / scale  # half-width of the kernel in input samples
    taps = np.arange(-math.ceil(half) + 1, math.ceil(half) + 1)
    n_out = round(x.size * ratio)
    out = np.empty(n_out, dtype=np.float64)
    for lo in range(0, n_out, 4096):
        t = np.arange(lo, min(n_out, lo + 4096)) / ratio  # output instants in input samples
        idx = np.floor(t).astype(np.int64)[:, None] + taps[None, :]
        d = t[:, None] - idx
        weights = scale * np.sinc(scale * d) * np.where(np.abs(d) < half, 0.5 + 0.5 * np.cos(np.pi * d / half), 0.0)
        valid = (idx >= 0) & (idx < x.size)
        out[lo : lo + t.size] = (x[np.clip(idx, 0, x.size - 1)] * weights * valid).sum(axis=1)
    return out.astype(np.float32)
