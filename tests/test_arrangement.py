"""arrange_music on a real worker with the real FluidSynth and GM SoundFont: the audio's tempo
(onset autocorrelation) and key (pitch-class profile against Krumhansl–Kessler) are measured
from the rendered WAV and must be the plan's; same seed, same bytes."""

from __future__ import annotations

import io
import shutil
import wave

import pytest
from pydantic import ValidationError

from dualplane.common.artifacts import store_from_settings
from dualplane.control_plane import ControlPlane
from dualplane.tasks.arrangement import ArrangeParams, SongPlan, arrange
from dualplane.tasks.music_theory import line_syllables, parse_key
from dualplane.tasks.soundfont_render import DEFAULT_SOUNDFONT, resolve_soundfont
from tests.helpers import node, wait_for_job

np = pytest.importorskip("numpy")
pretty_midi = pytest.importorskip("pretty_midi")

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not DEFAULT_SOUNDFONT.is_file(),
                                      reason="needs fluidsynth and the Debian GM SoundFont (fluid-soundfont-gm)")

RAIN = {
    "title": "Rain Window", "genre": "lo-fi hip hop", "bpm": 96, "key": "A minor", "mood": "rainy, night",
    "mode": "lyrics-first", "duration_s": 24.0, "instrumentation": ["dusty drums", "warm piano", "soft bass"],
    "music_prompt": "ignored by the arranger", "video_prompt": "so is this",
    "sections": [
        {"name": "intro", "start_s": 0.0, "duration_s": 4.0},
        {"name": "verse", "start_s": 4.0, "duration_s": 10.0, "chords": ["Am", "F", "C", "G"],
         "lyrics": "rain falls soft on the window\nwe keep the night in our hands"},
        {"name": "chorus", "start_s": 14.0, "duration_s": 6.0, "chords": ["F", "G", "Am", "Am"],
         "lyrics": "hold on to the light a little longer"},
        {"name": "outro", "start_s": 20.0, "duration_s": 4.0},
    ],
}
#: A different key, mode, tempo, genre and lead mode, with no chords or sections at all.
CLUB = {"genre": "techno", "bpm": 128, "key": "E major", "mood": "upbeat", "mode": "melody-only",
        "duration_s": 24.0, "instrumentation": ["kick drum", "analog synth bass", "hi-hats", "pads"]}


# -- measuring the audio ----------------------------------------------------------------------

KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def read_wav(body: bytes):
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getsampwidth() == 2
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, channels)
    return rate, channels, pcm


def spectrogram(x, n_fft: int, hop: int):
    frames = 1 + (x.size - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    return np.abs(np.fft.rfft(x[index] * np.hanning(n_fft), axis=1))


def estimate_tempo(x, rate: int, lo: float = 60.0, hi: float = 200.0) -> tuple[float, list[tuple[float, float]]]:
    """BPM from the autocorrelation of a spectral-flux onset envelope (hop 256).

    Octave errors: the autocorrelation in the 60-200 BPM lags is weighted by a log-Gaussian
    around 120 BPM (one octave wide, Ellis 2007), the same for every plan, so the answer never
    sees the plan. The beat lag found is then refined at four beats (the peak of the bar lag,
    divided by four) for a quarter of the quantisation error. Also returns the top candidates."""
    hop = 256
    fps = rate / hop
    rise = np.maximum(0.0, np.diff(np.log1p(1000 * spectrogram(x, 1024, hop)), axis=0))
    freqs = np.fft.rfftfreq(1024, 1 / rate)
    width = int(fps)
    envelope = np.zeros(rise.shape[0])
    # one envelope per octave-ish band, each normalised, then summed (Scheirer 1998): summed over
    # all bins at once, the broadband hats and claps would outvote the kick, whose energy sits
    # in a few low bins
    for low, high in ((30, 150), (150, 600), (600, 2400), (2400, 9600)):
        flux = rise[:, (freqs >= low) & (freqs < high)].sum(axis=1)
        band = np.maximum(0.0, flux - np.convolve(flux, np.ones(width) / width, mode="same"))
        envelope += band / (band.std() or 1.0)
    envelope -= envelope.mean()
    n = envelope.size
    ac = np.fft.irfft(np.abs(np.fft.rfft(envelope, 2 * n)) ** 2)[:n]
    ac /= ac[0]
    lags = np.arange(int(60 * fps / hi), int(60 * fps / lo) + 2)
    bpms = 60 * fps / lags
    score = ac[lags] * np.exp(-0.5 * np.log2(bpms / 120) ** 2)
    beat = lags[np.argmax(score)]

    def peak_near(lag: float) -> float:
        radius = max(2, int(0.03 * lag))
        around = np.arange(round(lag) - radius, round(lag) + radius + 1)
        k = int(around[np.argmax(ac[around])])
        a, b, c = ac[k - 1], ac[k], ac[k + 1]
        return k + (0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0)

    lag = peak_near(beat)
    if 4 * lag + 8 < n:
        lag = peak_near(4 * lag) / 4
    top = sorted(zip(score.tolist(), bpms.tolist(), strict=True), reverse=True)[:3]
    return 60 * fps / lag, [(round(b, 1), round(s, 3)) for s, b in top]


def key_correlations(x, rate: int) -> list[tuple[float, str]]:
    """Pitch-class profile (log-compressed FFT magnitudes, 55-2000 Hz, each bin to its nearest
    pitch class) correlated with the Krumhansl-Kessler profiles of all 24 keys, best first."""
    n_fft = 8192
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    band = (freqs >= 55) & (freqs <= 2000)
    magnitude = spectrogram(x, n_fft, 2048)[:, band]
    compressed = np.log1p(100 * magnitude / magnitude.max())
    classes = (np.round(12 * np.log2(freqs[band] / 440)) + 69).astype(int) % 12
    profile = np.bincount(classes, weights=compressed.sum(axis=0), minlength=12)
    out = [(float(np.corrcoef(profile, np.roll(template, tonic))[0, 1]), f"{NAMES[tonic]} {mode}")
           for tonic in range(12) for mode, template in (("major", KK_MAJOR), ("minor", KK_MINOR))]
    return sorted(out, reverse=True)


# -- end to end ---------------------------------------------------------------------------------


def arrangement_node(node_id: str, plan, **params) -> dict:
    return {"id": node_id, "task": "arrange_music", "plane": "python",
            "params": {"plan": plan, "sample_rate": 22050, **params}}


@needs_fluidsynth
async def test_rendered_arrangements_have_the_plans_tempo_and_key_and_the_seed_fixes_the_audio(
    control_plane: ControlPlane, worker_factory, settings
):
    store = store_from_settings(settings.store)
    assert store is not None
    await store.ensure_bucket()
    await worker_factory(concurrency=2)
    graph = {"nodes": [
        arrangement_node("rain", RAIN, seed=1),
        arrangement_node("rain_again", RAIN, seed=1),
        arrangement_node("rain_other", RAIN, seed=2),
        arrangement_node("club", CLUB, seed=1),
        {"id": "song", "task": "plan_song", "plane": "control",
         "params": {"narrative": "a melancholic jazz song about a lonely night", "duration_s": 20}},
        {"id": "from_song", "task": "arrange_music", "plane": "python", "needs": ["song"],
         "params": {"plan": {"$ref": "song.output"}, "sample_rate": 22050}},
        {"id": "long", "task": "arrange_music", "plane": "python",
         "params": {"plan": RAIN, "duration_s": 180, "seed": 3}},
    ]}

    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=240)

    assert job.status == "succeeded", {n.id: n.error for n in job.graph.nodes}
    wavs = {}
    for node_id, plan in (("rain", RAIN), ("rain_again", RAIN), ("rain_other", RAIN), ("club", CLUB)):
        out = node(job, node_id).output
        assert out["model"] == "fluidsynth-gm" and out["bpm"] == plan["bpm"] and out["key"] == plan["key"]
        assert out["audio"] == f"jobs/{job.id}/{node_id}/music.wav" and out["compressed_format"] == "opus"
        wavs[node_id] = body = await store.get(out["audio"])
        rate, channels, pcm = read_wav(body)
        assert (rate, channels) == (22050, 2) and pcm.shape[0] == round(plan["duration_s"] * rate)  # exact length
        mono = pcm.astype(np.float64).mean(axis=1) / 32768
        bpm, candidates = estimate_tempo(mono, rate)
        keys = key_correlations(mono, rate)
        print(f"{node_id}: tempo {bpm:.2f} BPM (plan {plan['bpm']}; candidates {candidates}); "
              f"key {keys[0][1]} (plan {plan['key']}); top keys {[(k, round(c, 3)) for c, k in keys[:4]]}; "
              f"render {out['render_s']} s")
        assert abs(bpm - plan["bpm"]) <= 3, (bpm, candidates)
        assert keys[0][1] == plan["key"], keys[:4]
        midi = pretty_midi.PrettyMIDI(io.BytesIO(await store.get(out["midi"])))
        assert abs(midi.get_tempo_changes()[1][0] - plan["bpm"]) < 0.01  # whole microseconds per beat
        assert {t["role"] for t in out["tracks"]} >= {"drums", "bass", "harmony", "lead"}
    assert wavs["rain"] == wavs["rain_again"]  # same seed, same audio, byte for byte
    assert wavs["rain"] != wavs["rain_other"]
    rain = node(job, "rain").output
    assert [s["name"] for s in rain["sections"]] == ["intro", "verse", "chorus", "outro"]
    assert [s["start_s"] for s in rain["sections"]] == [0.0, 5.0, 15.0, 20.0]  # bar lines at 96 BPM (2.5 s)
    assert [t["instrument"] for t in rain["tracks"]] == ["Standard Kit", "Electric Bass (finger)",
                                                         "Acoustic Grand Piano", "Voice Oohs"]

    # the lead sings the lyrics: one note per syllable, and each word is a MIDI lyric
    midi = pretty_midi.PrettyMIDI(io.BytesIO(await store.get(rain["midi"])))
    lead = next(i for i in midi.instruments if i.name.startswith("lead"))
    words = [w for s in RAIN["sections"] for line in s.get("lyrics", "").splitlines() for w in line_syllables(line)]
    assert len(lead.notes) == sum(n for _, n in words)
    assert [lyric.text for lyric in midi.lyrics] == [w for w, _ in words]

    # a whole plan_song output, with no key and no chords: defaults, and still the plan's tempo
    song, arranged = node(job, "song").output, node(job, "from_song").output
    planned_key = parse_key(song["key"]).name if "key" in song else "A minor"  # melancholic, lonely: minor
    assert arranged["bpm"] == song["bpm"] and arranged["key"] == planned_key
    assert arranged["duration_s"] == 20 and [s["name"] for s in arranged["sections"]] == [
        s["name"] for s in song["sections"]]
    rate, _, pcm = read_wav(await store.get(arranged["audio"]))
    print(f"from plan_song ({song['genre']}, {song['bpm']} BPM): tempo "
          f"{estimate_tempo(pcm.mean(axis=1) / 32768, rate)[0]:.2f} BPM, tracks "
          f"{[t['instrument'] for t in arranged['tracks']]}")

    long = node(job, "long").output
    rate, _, pcm = read_wav(await store.get(long["audio"]))
    assert rate == 44100 and pcm.shape[0] == 180 * 44100
    print(f"3-minute track: composed and rendered in {long['render_s']} s "
          f"({sum(t['notes'] for t in long['tracks'])} notes, sections {[s['name'] for s in long['sections']]})")


# -- the composer alone ---------------------------------------------------------------------


def test_plans_are_validated_and_missing_fields_fall_back():
    plan = SongPlan.model_validate({"bpm": 100, "whatever": "ignored"})
    arrangement = arrange(plan, seed=0, duration_s=12)
    assert arrangement.key.name == "C major" and arrangement.chords == ["C", "G", "Am", "F"]
    assert [s.name for s in arrangement.sections] == ["verse"] and arrangement.sections[0].bars == 5
    with pytest.raises(ValidationError, match="chord"):
        SongPlan.model_validate({"bpm": 100, "chords": ["Am", "Q7"]})
    with pytest.raises(ValidationError, match="key"):
        SongPlan.model_validate({"bpm": 100, "key": "H dorian"})
    with pytest.raises(ValidationError, match="duration_s"):
        ArrangeParams.model_validate({"plan": {"bpm": 100}})
    with pytest.raises(ValidationError):
        ArrangeParams.model_validate({"plan": {"bpm": 100}, "duration_s": 10, "tempo": 3})  # params forbid extras
    with pytest.raises(ValueError, match="soundfont"):
        resolve_soundfont("/etc/passwd")


def test_the_same_seed_composes_the_same_midi_and_another_seed_does_not():
    plan = SongPlan.model_validate(RAIN)
    notes = [[(n.pitch, n.start, n.velocity) for i in arrange(plan, seed=seed, duration_s=24).midi.instruments
              for n in i.notes] for seed in (5, 5, 6)]
    assert notes[0] == notes[1] and notes[0] != notes[2]
