"""Narration or vocals over a music bed, ducked, then normalised to an EBU R128 loudness — with
ffmpeg alone (the control plane runs this and never imports numpy or torch).

Ducking is an envelope computed from where the voice speaks, not a compressor: a compressor's
gain reduction depends on how loud the voice is over its threshold, so "10 dB under the voice"
would be a guess. Here ``silencedetect`` finds the voice's speech spans (pauses shorter than
:data:`HOLD_S` count as speech, so the bed does not pump between words), and a ``volume``
expression lowers the bed by exactly ``duck_db`` over them, ramping down :data:`ATTACK_S` before
the voice starts (the timeline is known: no compressor lag) and back up over :data:`RELEASE_S`.

Loudness is two-pass ``loudnorm``: measure, then apply with the measured values and
``linear=true`` (one gain for the whole track, no dynamics change). ``loudnorm`` falls back to
its dynamic mode when the linear gain would push the true peak over :data:`TRUE_PEAK_DB`; the
result is measured again (``ebur128``) and corrected by a plain gain when it missed by more than
:data:`CORRECT_ABOVE_LU` (linear mode itself lands up to ~0.3 LU off on some mixes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dualplane.tasks.audio_files import probe_duration_s, run_ffmpeg

#: Everything is mixed at 48 kHz stereo (Opus' and AAC-in-MP4's usual rate).
MIX_RATE = 48000
MIX_CHANNELS = 2
#: The voice is "speaking" where it is within this many dB of its own peak.
SPEECH_BELOW_PEAK_DB = 30.0
#: A voice whose peak is at or below this (dBFS; 16-bit's floor is -96) is silence.
SILENT_PEAK_DB = -90.0
#: Pauses in the voice shorter than this keep the bed down.
HOLD_S = 0.5
ATTACK_S = 0.08
RELEASE_S = 0.35
#: Speech spans beyond this many are merged over their shortest gaps (the gain expression
#: is evaluated per 256 samples: it must stay short).
MAX_SPANS = 200
TRUE_PEAK_DB = -1.0
#: Loudness range target: the widest loudnorm takes, so a dynamic track is not a reason to leave linear mode.
TARGET_LRA = 50.0
CORRECT_ABOVE_LU = 0.2
#: A mix measured at or below this (LUFS) has nothing above the R128 absolute gate: left as is.
SILENT_LUFS = -70.0


@dataclass(frozen=True)
class Mixed:
    path: Path
    duration_s: float
    loudness_lufs: float  # integrated loudness of the result, measured (ebur128)
    normalization: str  # "linear" or "dynamic" (loudnorm's choice), "+gain" if corrected; "none", "silent"
    speech: list[tuple[float, float]]  # where the bed was ducked (seconds on the mix's timeline)


def mix(bed: Path, out: Path, *, voice: Path | None = None, voice_start_s: float = 0.0, duck_db: float = 10.0,
        loudness_lufs: float | None = -14.0) -> Mixed:
    """Mix ``voice`` (if any) over ``bed`` into the WAV ``out`` (48 kHz stereo, 16-bit): the mix
    lasts as long as the longer of the bed and the delayed voice."""
    speech = speech_spans(voice, voice_start_s) if voice is not None else []
    inputs = ["-i", str(bed)] + (["-i", str(voice)] if voice is not None else [])
    graph = _graph(speech, duck_db, voice_start_s if voice is not None else None)
    target = f"I={loudness_lufs}:TP={TRUE_PEAK_DB}:LRA={TARGET_LRA}"
    measured = loudness_lufs is not None and _loudnorm_json(run_ffmpeg(
        ["-loglevel", "info", *inputs, "-filter_complex", f"{graph};[mix]loudnorm={target}:print_format=json[out]",
         "-map", "[out]", "-f", "null", "-"]))
    if not measured or float(measured["input_i"]) <= SILENT_LUFS:
        # no target, or nothing above the R128 gate to measure: any gain would only amplify noise
        normalization = "none" if not measured else "silent"
        run_ffmpeg(["-loglevel", "error", *inputs, "-filter_complex", graph, "-map", "[mix]", *_WAV, str(out)])
        return Mixed(path=out, duration_s=probe_duration_s(out), loudness_lufs=round(measure_lufs(out), 2),
                     normalization=normalization, speech=speech)
    assert loudness_lufs is not None  # measured only with a target
    # a steady track measures LRA 0.00, which loudnorm reads as "not measured" and answers with
    # its dynamic mode: the smallest non-zero range keeps it linear
    lra = max(float(measured["input_lra"]), 0.01)
    second = (f"loudnorm={target}:measured_I={measured['input_i']}:measured_TP={measured['input_tp']}"
              f":measured_LRA={lra}:measured_thresh={measured['input_thresh']}"
              f":offset={measured['target_offset']}:linear=true:print_format=json")
    applied = _loudnorm_json(run_ffmpeg(
        ["-loglevel", "info", *inputs, "-filter_complex", f"{graph};[mix]{second},aresample={MIX_RATE}[out]",
         "-map", "[out]", *_WAV, str(out)]))
    normalization = applied.get("normalization_type", "linear")
    lufs = measure_lufs(out)
    if abs(lufs - loudness_lufs) > CORRECT_ABOVE_LU:
        corrected = out.with_name(out.stem + ".gain.wav")
        run_ffmpeg(["-loglevel", "error", "-i", str(out), "-af", f"volume={loudness_lufs - lufs:.3f}dB", *_WAV,
                    str(corrected)])
        corrected.replace(out)
        lufs, normalization = measure_lufs(out), normalization + "+gain"
    return Mixed(path=out, duration_s=probe_duration_s(out), loudness_lufs=round(lufs, 2),
                 normalization=normalization, speech=speech)


_WAV = ["-ar", str(MIX_RATE), "-ac", str(MIX_CHANNELS), "-c:a", "pcm_s16le", "-f", "wav"]
_FORMAT = f"aformat=sample_fmts=fltp:sample_rates={MIX_RATE}:channel_layouts=stereo"


def _graph(speech: list[tuple[float, float]], duck_db: float, voice_start_s: float | None) -> str:
    """The filter graph from the inputs (0: bed, 1: voice) to ``[mix]``."""
    if voice_start_s is None:
        return f"[0:a]{_FORMAT}[mix]"
    bed = f"[0:a]{_FORMAT}"
    if speech and duck_db > 0:
        # 256-sample frames: the gain moves every 5 ms, so a ramp is smooth rather than stepped
        bed += f",asetnsamples=n=256,volume='{duck_gain(speech, duck_db)}':eval=frame"
    delay_ms = round(voice_start_s * 1000)
    return (f"{bed}[bed];[1:a]{_FORMAT},adelay=delays={delay_ms}:all=1[voice];"
            "[bed][voice]amix=inputs=2:duration=longest:normalize=0[mix]")


def duck_gain(speech: list[tuple[float, float]], duck_db: float) -> str:
    """A ``volume`` expression of ``t``: 1 outside the spans, ``-duck_db`` dB inside, with ramps.

    Spans are at least :data:`HOLD_S` apart, longer than a release plus an attack, so their ramps
    never overlap and summing them is their union."""
    ramps = "+".join(f"clip((t-({start - ATTACK_S:.3f}))/{ATTACK_S},0,1)*clip(({end + RELEASE_S:.3f}-t)/{RELEASE_S},0,1)"
                     for start, end in speech)
    return f"pow(10,-{duck_db / 20:.4f}*min(1,{ramps}))"


def speech_spans(voice: Path, start_s: float) -> list[tuple[float, float]]:
    """Where the voice speaks, in seconds on the mix's timeline (shifted by ``start_s``)."""
    summary = run_ffmpeg(["-i", str(voice), "-af", "volumedetect", "-f", "null", "-"])
    found = re.search(r"max_volume: (-?[\d.]+|-inf) dB", summary)
    if found is None:
        raise RuntimeError(f"no peak from volumedetect: {summary[-300:]}")
    peak = float(found.group(1))
    if peak <= SILENT_PEAK_DB:
        return []  # digital silence: nothing to duck under
    detected = run_ffmpeg(["-i", str(voice), "-af", f"silencedetect=noise={peak - SPEECH_BELOW_PEAK_DB:.1f}dB:d={HOLD_S}",
                           "-f", "null", "-"])
    total = probe_duration_s(voice)
    starts = [float(v) for v in re.findall(r"silence_start: (-?[\d.]+)", detected)]
    ends = [float(v) for v in re.findall(r"silence_end: ([\d.]+)", detected)]
    # speech is what lies between silences: from 0 (or a silence's end) to the next silence's start
    edges = [0.0, *[x for pair in zip(starts, [*ends, total][: len(starts)], strict=True) for x in pair], total]
    spans = [(max(0.0, a), min(total, b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a > 0.01]
    while len(spans) > MAX_SPANS:
        gap = min(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - spans[i][1])
        spans[gap:gap + 2] = [(spans[gap][0], spans[gap + 1][1])]
    return [(round(a + start_s, 3), round(b + start_s, 3)) for a, b in spans]


def measure_lufs(path: Path) -> float:
    """Integrated loudness (LUFS) of a file's audio, by ffmpeg's EBU R128 scanner."""
    summary = run_ffmpeg(["-nostats", "-i", str(path), "-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"])
    found = re.findall(r"I:\s+(-?[\d.]+|-inf) LUFS", summary)
    if not found:
        raise RuntimeError(f"no loudness summary from ebur128: {summary[-300:]}")
    return float(found[-1])  # the last one is the summary; the ones before are per-frame lines


def _loudnorm_json(stderr: str) -> dict[str, str]:
    start = stderr.rindex("{")
    return json.loads(stderr[start: stderr.index("}", start) + 1])


__all__ = ["MIX_CHANNELS", "MIX_RATE", "Mixed", "duck_gain", "measure_lufs", "mix", "speech_spans"]
