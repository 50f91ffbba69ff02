"""mix_audio and mux_media through the control plane, on signals whose parts can be told apart.

The bed is a chord below 400 Hz and the "voice" band-limited, syllable-modulated noise between
2.5 and 5 kHz, so the bed's level can be read under the voice by looking below 1 kHz only —
in the same file, before, under and after the voice (one linear loudness gain covers the whole
file, so the comparison is not skewed by normalisation). Loudness is measured here with ffmpeg's
``ebur128``, apart from the task's own measurement.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import wave

import pytest

np = pytest.importorskip("numpy")

from dualplane.common.artifacts import store_from_settings
from dualplane.control_plane import ControlPlane
from dualplane.ml.audio import wav_bytes
from dualplane.tasks.video import mp4_bytes
from tests.helpers import node, wait_for_job

RATE = 44100
BED_S = 9.0
VOICE_AT, VOICE_S = 3.0, 3.0
FPS = 10
VTT = "WEBVTT\n\n1\n00:00:01.000 --> 00:00:03.000\nHELLO THERE WORLD\n"


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def bed() -> np.ndarray:
    t = np.arange(int(BED_S * RATE)) / RATE
    chord = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t)
    return np.stack([chord, chord])


def voice() -> np.ndarray:
    t = np.arange(int(VOICE_S * RATE)) / RATE
    spectrum = np.fft.rfft(np.random.default_rng(5).standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / RATE)
    spectrum[(freqs < 2500) | (freqs > 5000)] = 0
    hiss = np.fft.irfft(spectrum, t.size)
    return (0.5 * hiss / np.abs(hiss).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2))[None, :]


def clip(seconds: float, *, size: tuple[int, int] = (320, 180), black: int = 3) -> bytes:
    """A moving gradient whose first ``black`` frames are black (a fade from black, abridged)."""
    width, height = size
    n = round(seconds * FPS)
    x = np.arange(width)[None, None, :]
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[..., 0] = (x * 2 + np.arange(n)[:, None, None] * 25) % 200 + 40
    frames[..., 1] = 90
    frames[..., 2] = np.arange(n)[:, None, None] * 9 % 200 + 30
    frames[:black] = 0
    return mp4_bytes(frames, FPS)


def lufs(media: bytes, suffix: str) -> float:
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(media)
        f.flush()
        err = subprocess.run([ffmpeg(), "-hide_banner", "-nostats", "-i", f.name, "-map", "0:a:0", "-af",
                              "ebur128", "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


def read_wav(body: bytes) -> tuple[np.ndarray, int]:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(body)
        f.flush()
        with wave.open(f.name) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
            return pcm.mean(axis=1) / 32768.0, w.getframerate()


def band_db(x: np.ndarray, rate: int, start: float, end: float, low: float, high: float) -> float:
    """Power (dB) of ``x[start:end]`` between ``low`` and ``high`` Hz (equal-length windows compare)."""
    segment = x[int(start * rate): int(end * rate)]
    spectrum = np.fft.rfft(segment * np.hanning(segment.size))
    freqs = np.fft.rfftfreq(segment.size, 1 / rate)
    return float(10 * np.log10(np.sum(np.abs(spectrum[(freqs >= low) & (freqs < high)]) ** 2) / segment.size + 1e-12))


def frames_of(mp4: bytes) -> tuple[dict, np.ndarray]:
    import imageio_ffmpeg

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        reader = imageio_ffmpeg.read_frames(f.name)
        meta = next(reader)
        width, height = meta["size"]
        return meta, np.stack([np.frombuffer(b, np.uint8).reshape(height, width, 3).astype(np.int16) for b in reader])


@pytest.fixture
async def inputs(settings):
    store = store_from_settings(settings.store)
    await store.ensure_bucket()

    async def put(name: str, data: bytes, content_type: str) -> str:
        return (await store.put("inputs", "src", name, data, content_type))["key"]

    keys = {
        "bed": await put("bed.wav", wav_bytes(bed(), RATE), "audio/wav"),
        "voice": await put("voice.wav", wav_bytes(voice(), RATE), "audio/wav"),
        "short": await put("short.mp4", clip(2.0), "video/mp4"),
        "long": await put("long.mp4", clip(12.0, black=0), "video/mp4"),  # opens on a picture
        "vtt": await put("lyrics.vtt", VTT.encode(), "text/vtt"),
    }
    return store, keys


async def run(control_plane: ControlPlane, nodes: list[dict]):
    job = await wait_for_job(control_plane, (await control_plane.submit({"nodes": nodes})).job_id, timeout_s=120)
    assert job.status == "succeeded", job.model_dump_json()
    return job


async def test_the_bed_ducks_under_the_voice_and_the_mix_lands_on_the_target_loudness(control_plane, inputs):
    store, keys = inputs
    mix = {"bed": keys["bed"], "voice": keys["voice"], "voice_start_s": VOICE_AT, "loudness_lufs": -16}
    job = await run(control_plane, [
        {"id": "ducked", "task": "mix_audio", "plane": "control", "params": {**mix, "duck_db": 10}},
        {"id": "flat", "task": "mix_audio", "plane": "control", "params": {**mix, "duck_db": 0}},
    ])
    for name, want in (("ducked", 10), ("flat", 0)):
        out = node(job, name).output
        assert out["format"] == "wav" and out["audio_compressed"] and out["sample_rate"] == 48000
        # one gain over the whole file (linear, maybe corrected by a plain gain): levels within it compare
        assert abs(out["duration_s"] - BED_S) < 0.05 and out["normalization"] in ("linear", "linear+gain"), out
        x, rate = read_wav(await store.get(out["audio"]))
        # the voice's middle, away from the ramps, against equally long bed-only stretches either side
        under = band_db(x, rate, VOICE_AT + 0.5, VOICE_AT + 2.5, 0, 1000)
        alone = min(band_db(x, rate, 0.5, 2.5, 0, 1000), band_db(x, rate, 6.8, 8.8, 0, 1000))
        voice_band = band_db(x, rate, VOICE_AT + 0.5, VOICE_AT + 2.5, 2000, 6000)
        assert voice_band - band_db(x, rate, 0.5, 2.5, 2000, 6000) > 30  # the voice really is there
        measured = lufs(await store.get(out["audio"]), ".wav")
        print(f"duck_db={want}: bed {alone - under:.2f} dB quieter under the voice; "
              f"integrated {measured:.2f} LUFS (target -16, task says {out['loudness_lufs']})")
        assert abs(measured + 16) <= 1.0
        if want:
            assert alone - under >= 6.0
        else:
            assert abs(alone - under) < 1.0  # the measurement sees no duck where there is none


async def test_the_video_is_fitted_to_the_audio_and_never_opens_on_a_blank_frame(control_plane, inputs):
    store, keys = inputs
    base = {"audio": keys["bed"], "loudness_lufs": -14}
    job = await run(control_plane, [
        {"id": "loop", "task": "mux_media", "plane": "control", "params": {**base, "video": keys["short"]}},
        {"id": "extend", "task": "mux_media", "plane": "control",
         "params": {**base, "video": keys["short"], "fit_video": "extend", "subtitles": keys["vtt"]}},
        {"id": "legacy", "task": "mux_media", "plane": "control",
         "params": {**base, "video": keys["short"], "loop_video": False}},
        {"id": "cut", "task": "mux_media", "plane": "control",
         "params": {**base, "video": keys["long"], "fit_video": "cut", "voice": keys["voice"],
                    "voice_start_s": VOICE_AT}},
        {"id": "burned", "task": "mux_media", "plane": "control",
         "params": {**base, "video": keys["short"], "fit_video": "extend", "subtitles": keys["vtt"],
                    "burn_subtitles": True}},
    ])
    decoded = {}
    for name, fit in (("loop", "looped"), ("extend", "extended"), ("legacy", "extended"), ("cut", "cut"),
                      ("burned", "extended")):
        out = node(job, name).output
        mp4 = await store.get(out["video"])
        meta, frames = frames_of(mp4)
        decoded[name] = frames
        measured = lufs(mp4, ".mp4")
        print(f"{name}: {len(frames)} frames, {meta['duration']} s, fit {out['fit']}, {measured:.2f} LUFS")
        assert out["fit"] == fit and out["format"] == "mp4" and (out["width"], out["height"]) == (320, 180)
        assert abs(len(frames) - BED_S * FPS) <= 1 and abs(out["duration_s"] - BED_S) <= 1 / FPS, (name, out)
        assert abs(measured + 14) <= 1.0, (name, measured)
        assert frames[0].mean() > 30, name
        assert out["first_frame_replaced"] is (name != "cut")  # the short clip opens on black frames
        poster = await store.get(out["poster"])
        assert poster[:8] == b"\x89PNG\r\n\x1a\n"
    assert node(job, "extend").output["subtitles"] == keys["vtt"]
    assert node(job, "cut").output["ducked_s"] >= VOICE_S - 0.1

    looped, held = decoded["loop"], decoded["extend"]
    assert np.abs(looped[25] - looped[45]).mean() < 3  # a 2 s video repeats every 20 frames
    assert np.abs(held[30] - held[80]).mean() < 3 and np.abs(held[30] - held[15]).mean() > 10  # last frame held
    changed = lambda i: int((np.abs(decoded["burned"][i] - held[i]).max(axis=2) > 60).sum())
    print(f"burned subtitles: {changed(20)} pixels changed while the cue shows, {changed(50)} after it")
    assert changed(20) > 100 and changed(50) < 10


def test_contradictory_fit_params_are_refused():
    from pydantic import ValidationError

    from dualplane.tasks.media import MuxParams

    with pytest.raises(ValidationError):
        MuxParams(audio="a.wav", video="v.mp4", loop_video=False, fit_video="loop")
    with pytest.raises(ValidationError):
        MuxParams(audio="a.wav", video="v.mp4", burn_subtitles=True)
    assert MuxParams(audio="a.wav", video="v.mp4", loop_video=False).fit == "extend"
