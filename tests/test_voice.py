"""train_voice → synthesize_voice end to end on a real worker, with the tiny SpeechT5 + HiFi-GAN
fetched from the object store; plus the WAV decoding and resampling the clips go through."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import wave
from pathlib import Path

import pytest

pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from dualplane.common.artifacts import ArtifactStore
from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job, wait_for_node

pytestmark = pytest.mark.ml

TEXT = "hello rainy night. the cat and the dog!"
#: The tiny random-weight model would stop after one step: pin the length per text token.
LENGTH = {"minlenratio": 2.0, "maxlenratio": 2.0}


@pytest.fixture
async def speech_models(settings, tiny_models) -> ArtifactStore:
    """The tiny SpeechT5 TTS model and HiFi-GAN vocoder under ``models/<name>/`` of this test's bucket."""
    from dualplane.common.artifacts import store_from_settings
    from dualplane.ml.model_store import upload_model_dir

    store = store_from_settings(settings.store)
    assert store is not None
    await store.ensure_bucket()
    for name in ("speecht5-tts", "speecht5-hifigan"):
        await upload_model_dir(store, name, tiny_models[name])
    return store


def voiced(f0: float, seconds: float, rate: int, seed: int):
    """A buzzy harmonic tone with a vibrato and a little noise: speech-like enough for mel features."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / rate
    x = sum(0.25 / k * np.sin(k * phase) for k in range(1, 8))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2  # syllable-like loudness
    return x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)


def pcm_wav(x, rate: int, *, channels: int = 1, width: int = 2) -> bytes:
    scale = float(2 ** (8 * width - 1) - 1)
    ints = np.round(np.clip(x, -1, 1) * scale).astype(np.int32)
    frames = np.repeat(ints[:, None], channels, axis=1).reshape(-1)
    raw = frames.astype("<i2").tobytes() if width == 2 else b"".join(
        int(v).to_bytes(3, "little", signed=True) for v in frames)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(raw)
    return buf.getvalue()


def float_wav(x, rate: int) -> bytes:
    """IEEE-float WAV (format tag 3), which the ``wave`` module refuses to read."""
    body = np.asarray(x, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def read_wav(body: bytes):
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getsampwidth() == 2
        params = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return params, samples


def speak(node_id: str, voice: dict | str | None = None, **extra) -> dict:
    params = {"text": TEXT, "seed": 7, **LENGTH, **extra}
    if voice is not None:
        params["voice"] = voice
    spec = {"id": node_id, "task": "synthesize_voice", "plane": "python", "params": params}
    if isinstance(voice, dict):
        spec["needs"] = [voice["$ref"].split(".")[0]]
    return spec


# -- end to end ---------------------------------------------------------------------------


async def test_trained_voice_changes_the_synthesized_audio_deterministically(
    control_plane: ControlPlane, worker_factory, speech_models: ArtifactStore, tmp_path: Path
):
    low = await speech_models.put_upload("alice", "low.wav", pcm_wav(voiced(110, 1.2, 22050, 1), 22050, channels=2),
                                         "audio/wav")  # stereo 16-bit at 22.05 kHz
    high = await speech_models.put_upload("alice", "high.wav", pcm_wav(voiced(240, 0.9, 16000, 2), 16000, width=3),
                                          "audio/wav")  # mono 24-bit at 16 kHz
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    ref = {"$ref": "voice.output.voice"}
    graph = {"nodes": [
        {"id": "voice", "task": "train_voice", "plane": "python",
         "params": {"clips": [low["key"], high["key"]], "transcripts": ["the cat", ""], "steps": 4,
                    "learning_rate": 0.05, "seed": 3}},
        speak("plain"),
        speak("trained", ref),
        speak("again", ref),
    ]}

    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=120)

    assert job.status == "succeeded", {n.id: n.error for n in job.graph.nodes}
    trained = node(job, "voice").output
    (artifact,) = node(job, "voice").artifacts
    assert trained["voice"] == artifact.key == f"jobs/{job.id}/voice/voice.safetensors"
    assert trained["steps"] == 4 and trained["steps_per_s"] > 0 and trained["objective"] == "mixed"
    assert trained["final_loss"] < trained["initial_loss"]  # the fit did something, on the same eval pass
    assert trained["clips"] == 2 and trained["clip_seconds"] == pytest.approx(2.1, abs=0.01)
    assert node(job, "voice").progress == 1.0

    from dualplane.tasks.voice_file import read_voice

    tensors, meta = read_voice(await speech_models.get(trained["voice"]))
    assert tensors["speaker_embedding"].shape == (16,)  # the tiny model's speaker_embedding_dim
    assert meta["format"] == "dualplane-voice" and meta["model"] == "speecht5-tts" and meta["steps"] == "4"
    assert float(meta["init_cosine"]) < 0.999  # moved away from its initialisation

    audio = {}
    for node_id in ("plain", "trained", "again"):
        out = node(job, node_id).output
        assert out["audio"] == f"jobs/{job.id}/{node_id}/voice.wav"
        (rate, channels), samples = read_wav(await speech_models.get(out["audio"]))
        assert rate == out["sample_rate"] == 16000 and channels == 1
        assert out["duration_s"] == pytest.approx(samples.size / rate) and out["duration_s"] > 0.5
        assert out["chunks"] == 2  # two sentences
        assert np.abs(samples.astype(np.int32)).max() > 100  # not silence
        audio[node_id] = samples
    assert node(job, "trained").output["voice"] == trained["voice"]
    # same text, seed and length: only the speaker differs
    assert audio["plain"].shape == audio["trained"].shape
    assert not np.array_equal(audio["plain"], audio["trained"])
    assert np.abs(audio["plain"].astype(np.int32) - audio["trained"]).mean() > 5
    assert np.array_equal(audio["trained"], audio["again"])  # deterministic


async def test_cancelling_training_stops_between_steps(
    control_plane: ControlPlane, worker_factory, speech_models: ArtifactStore, tmp_path: Path
):
    clip = await speech_models.put_upload("alice", "c.wav", pcm_wav(voiced(150, 0.5, 16000, 3), 16000), "audio/wav")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    graph = {"nodes": [{"id": "voice", "task": "train_voice", "plane": "python",
                        "params": {"clips": [clip["key"]], "steps": 10000}}]}
    job_id = (await control_plane.submit(graph)).job_id
    await wait_for_node(control_plane, job_id, "voice", "running", timeout_s=30)
    deadline = time.monotonic() + 30
    while (node(await control_plane.get_job(job_id), "voice").progress or 0) < 0.01:
        assert time.monotonic() < deadline, "training never reported progress"
        await asyncio.sleep(0.05)
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=10)

    assert job.status == "cancelled"
    assert node(job, "voice").status == "cancelled" and node(job, "voice").progress < 0.9
    assert not node(job, "voice").artifacts


# -- params, decoding, resampling ------------------------------------------------------------


def test_params_are_checked_at_the_boundary():
    from pydantic import ValidationError

    from dualplane.tasks.synthesize_voice import SynthesizeVoiceParams, split_text
    from dualplane.tasks.train_voice import TrainVoiceParams

    with pytest.raises(ValidationError, match="transcripts has 1 entries for 2 clips"):
        TrainVoiceParams(clips=["a.wav", "b.wav"], transcripts=["x"])
    with pytest.raises(ValidationError):
        TrainVoiceParams(clips=[])
    with pytest.raises(ValidationError, match="object key or an http"):
        TrainVoiceParams(clips=["../etc/passwd"])
    with pytest.raises(ValidationError, match="nothing to speak"):
        SynthesizeVoiceParams(text="   ")
    with pytest.raises(ValidationError, match="minlenratio"):
        SynthesizeVoiceParams(text="hi", minlenratio=3, maxlenratio=2)
    assert split_text("One. Two!\n\nthree four five six", 10) == ["One.", "Two!", "three four", "five six"]


def test_wav_formats_decode_to_the_same_mono_signal():
    from dualplane.ml.audio import decode_wav

    x = voiced(200, 0.2, 16000, 4) * 0.5
    for body, tolerance in ((pcm_wav(x, 16000), 1e-4), (pcm_wav(x, 16000, channels=2, width=3), 1e-6),
                            (float_wav(x, 16000), 1e-7)):
        samples, rate = decode_wav(body)
        assert rate == 16000 and samples.dtype == np.float32 and samples.shape == x.shape
        assert np.abs(samples - x).max() < tolerance
    with pytest.raises(ValueError, match="RIFF"):
        decode_wav(b"not a wav file at all")


def test_resampling_keeps_the_band_and_removes_what_is_above_the_new_nyquist():
    from dualplane.ml.audio import resample

    rate = 44100
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    out = resample(tone, rate, 16000)
    assert out.size == 16000
    spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(12000)))
    assert np.argmax(spectrum) * 16000 / 12000 == pytest.approx(1000, abs=2)
    assert np.abs(out[1000:-1000]).max() == pytest.approx(0.5, rel=0.01)  # gain 1 in the pass band
    alias = resample(0.5 * np.sin(2 * np.pi * 12000 * t), rate, 16000)  # above 8 kHz: must not fold to 4 kHz
    assert np.abs(alias[1000:-1000]).max() < 0.02
    up = resample(out, 16000, 48000)
    assert up.size == 48000 and np.abs(up[3000:-3000]).max() == pytest.approx(0.5, rel=0.01)
