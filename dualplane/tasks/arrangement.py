"""``arrange_music`` (python plane, CPU): a song plan becomes a multi-track arrangement —
drums, bass, chords, pads and a lead — written as MIDI and rendered with FluidSynth.

The composing (:func:`arrange`) is a pure function of the plan, the seed and the duration:
it draws only from ``random.Random`` instances seeded from the task's seed, so the same
inputs give the same MIDI, and FluidSynth makes the same audio from the same MIDI.

Musical choices, and why:

* Sections are snapped to whole bars (4/4) so every part changes with the harmony; the
  output says where each section really starts.
* Drums always play, on every beat (kick/snare or four-on-the-floor): the groove carries the
  plan's tempo, which is what a vocal or a video cut is later fitted to.
* A plan without chords gets the key's default progressions; the minor ones use the
  harmonic minor's major V, whose leading tone is what makes a minor key sound minor.
* In "lyrics-first" mode the lead sings without words: one note per syllable, a phrase per
  lyric line, inside the section's bars (a stand-in for the vocal, and a guide for one). In
  "melody-only" mode it plays an instrumental tune whose phrases repeat (A B A B).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.tasks.instrumentation import Part, assign_parts
from dualplane.tasks.music_theory import Chord, Key, line_syllables, parse_chord, parse_key

MAX_DURATION_S = 600.0
#: Section names that have no lead line of their own.
QUIET_SECTIONS = ("intro", "outro")
#: Density of each section: 0 sparse, 1 groove, 2 full; names not listed play the groove.
DENSITY = {"intro": 0, "outro": 0, "verse": 1, "theme": 1, "bridge": 1, "chorus": 2}
#: Mood words that make the arrangement softer or harder (velocity scale).
SOFT_MOODS = ("calm", "dreamy", "melancholic", "lonely", "rainy", "sad", "soft", "gentle", "nostalgic", "night")
HARD_MOODS = ("upbeat", "happy", "energetic", "dark", "angry", "epic", "party", "summer")
#: Mood words that make a plan without a key minor.
MINOR_MOODS = ("melancholic", "dark", "lonely", "rainy", "sad", "night", "nostalgic", "winter")


def _chord_symbol(symbol: str) -> str:
    parse_chord(symbol)
    return symbol.strip()


def _key_name(name: str) -> str:
    return parse_key(name).name


ChordSymbol = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_chord_symbol)]


# -- params ---------------------------------------------------------------------------------


class PlanSection(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field("verse", min_length=1, max_length=40)
    start_s: float | None = Field(None, ge=0, le=MAX_DURATION_S)
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)
    chords: list[ChordSymbol] | None = Field(None, min_length=1, max_length=64)
    lyrics: str | None = Field(None, max_length=5000)


class SongPlan(BaseModel):
    """The fields of a ``plan_song`` output the arranger uses; everything else (prompts, title)
    is ignored, so a whole plan can be passed with ``{"$ref": "song.output"}``."""

    model_config = ConfigDict(extra="ignore")
    bpm: float = Field(..., ge=40, le=240, description="Tempo, beats per minute.")
    key: Annotated[str, Field(max_length=20), AfterValidator(_key_name)] | None = Field(
        None, description="Tonic and mode, e.g. 'A minor'; from the mood if absent.")
    genre: str = Field("", max_length=200)
    mood: str = Field("", max_length=500, description="Comma-separated mood words.")
    mode: Literal["lyrics-first", "melody-only"] | None = Field(
        None, description="Whether the lead follows lyrics; absent: lyrics-first when there are lyrics.")
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S)
    chords: list[ChordSymbol] | None = Field(None, min_length=1, max_length=64,
                                             description="Default progression, one chord per bar.")
    sections: list[PlanSection] = Field(default_factory=list, max_length=64)
    lyrics: str = Field("", max_length=20000)
    instrumentation: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=16)


class ArrangeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: SongPlan = Field(..., description="A song plan (plan_song's output); unknown fields are ignored.")
    duration_s: float | None = Field(None, gt=0, le=MAX_DURATION_S,
                                     description="Length of the track; default the plan's.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of every musical choice (same seed, same audio).")
    sample_rate: int = Field(44100, ge=22050, le=48000, description="Sample rate of the audio, Hz.")
    soundfont: str | None = Field(None, min_length=1, max_length=300,
                                  description="A .sf2/.sf3 in the system SoundFont folders; default FluidR3 GM.")
    melody: bool = Field(True, description="Whether a lead plays the melody (off: leave room for a real vocal).")

    @model_validator(mode="after")
    def _has_duration(self) -> ArrangeParams:
        if track_duration(self.plan, self.duration_s) is None:
            raise ValueError("give duration_s: the plan has neither a duration nor timed sections")
        return self


def track_duration(plan: SongPlan, override: float | None) -> float | None:
    if override is not None:
        return override
    if plan.duration_s is not None:
        return plan.duration_s
    ends = [s.start_s + s.duration_s for s in plan.sections if s.start_s is not None and s.duration_s is not None]
    return min(MAX_DURATION_S, max(ends)) if ends else None


# -- the arrangement ------------------------------------------------------------------------


@dataclass
class SectionPlan:
    name: str
    start_bar: int
    bars: int
    chords: list[Chord]
    lines: list[str] = field(default_factory=list)
    #: Chord of the section's last bar instead of the progression's (the song's final cadence).
    ending: Chord | None = None

    def chord(self, bar: int) -> Chord:
        if self.ending is not None and bar == self.bars - 1:
            return self.ending
        return self.chords[bar % len(self.chords)]


@dataclass
class Arrangement:
    midi: Any  # pretty_midi.PrettyMIDI
    bpm: float
    key: Key
    chords: list[str]
    sections: list[SectionPlan]
    parts: list[Part]
    duration_s: float
    notes: list[int]  # per part

    @property
    def bar_s(self) -> float:
        return 4 * 60.0 / self.bpm


def arrange(plan: SongPlan, *, seed: int, duration_s: float, melody: bool = True) -> Arrangement:
    """Compose the plan into a :class:`pretty_midi.PrettyMIDI` of ``duration_s`` (whole bars, the
    last one possibly cut by the renderer)."""
    import pretty_midi

    key = parse_key(plan.key) if plan.key else _key_from_mood(plan.mood)
    style = _style(plan.genre)
    beat_s = 60.0 / plan.bpm
    total_bars = max(1, math.ceil(duration_s / (4 * beat_s) - 1e-6))
    sections = _layout(plan, key, duration_s, total_bars)
    lyric = plan.mode == "lyrics-first" if plan.mode else any(s.lines for s in sections)
    if not lyric:
        for section in sections:
            section.lines = []
    parts = assign_parts(plan.instrumentation, style, vocal_lead=lyric, with_lead=melody)
    energy = _energy(plan.mood)
    rng = random.Random(seed)

    midi = pretty_midi.PrettyMIDI(initial_tempo=float(plan.bpm))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    midi.key_signature_changes.append(pretty_midi.KeySignature(pretty_midi.key_name_to_key_number(key.name), 0.0))
    writer = _Writer(midi, beat_s, energy)
    for part in parts:
        instrument = writer.track(part)
        for index, section in enumerate(sections):
            following = sections[index + 1].name if index + 1 < len(sections) else None
            if part.role == "drums":
                _drums(writer, instrument, rng, style, section, following)
            elif part.role == "bass":
                _bass(writer, instrument, rng, key, style, section, part.program)
            elif part.role == "harmony":
                _harmony(writer, instrument, key, style, section)
            elif part.role == "pad":
                _pad(writer, instrument, key, section)
            elif part.role == "lead" and section.name not in QUIET_SECTIONS:
                _lead(writer, instrument, key, section, seed=seed)
    main = [c.symbol for c in sections[0].chords] if not plan.chords else list(plan.chords)
    return Arrangement(midi=midi, bpm=float(plan.bpm), key=key, chords=main, sections=sections, parts=parts,
                       duration_s=duration_s, notes=writer.counts)


def _key_from_mood(mood: str) -> Key:
    return parse_key("A minor" if any(m in mood.lower() for m in MINOR_MOODS) else "C major")


def _style(genre: str) -> str:
    text = genre.lower()
    for keywords, style in ((("techno", "house", "edm", "dance", "electro", "trance"), "techno"),
                            (("lo-fi", "lofi", "hip hop", "hip-hop", "chillhop"), "lofi"),
                            (("jazz", "swing", "bossa"), "jazz"), (("rock", "punk", "metal", "grunge"), "rock"),
                            (("ambient", "drone"), "ambient"), (("orchestra", "cinematic", "film", "epic"), "cinematic"),
                            (("folk", "acoustic", "country"), "folk")):
        if any(k in text for k in keywords):
            return style
    return "pop"


def _energy(mood: str) -> float:
    words = mood.lower()
    return 1.0 - 0.08 * sum(m in words for m in SOFT_MOODS) + 0.08 * sum(m in words for m in HARD_MOODS)


def _layout(plan: SongPlan, key: Key, duration_s: float, total_bars: int) -> list[SectionPlan]:
    """The plan's sections on whole bars, scaled to ``duration_s``; a default form without any."""
    bar_s = 240.0 / plan.bpm
    timed: list[tuple[PlanSection, float]] = []
    cursor = 0.0
    for section in plan.sections:
        start = section.start_s if section.start_s is not None else cursor
        cursor = start + (section.duration_s or 0.0)
        timed.append((section, start))
    planned = track_duration(plan, None) or duration_s
    scale = duration_s / planned if planned else 1.0
    if not timed:
        timed = [(PlanSection(name=name), bar * bar_s) for name, bar in _default_form(total_bars, plan.mode)]
        scale = 1.0
    starts: list[tuple[PlanSection, int]] = []
    for section, start in timed:
        bar = 0 if not starts else max(starts[-1][1] + 1, round(start * scale / bar_s))
        if bar < total_bars:
            starts.append((section, bar))
    lines = _section_lines(plan, [s for s, _ in starts])
    out = []
    for i, (section, bar) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else total_bars
        symbols = section.chords or plan.chords or key.default_progression(
            "chorus" if section.name == "chorus" else "bridge" if section.name == "bridge" else "main")
        out.append(SectionPlan(section.name, bar, end - bar, [parse_chord(c) for c in symbols], lines[i]))
    # the song ends on its tonic, as songs do: it is also what says which key it was in
    out[-1].ending = parse_chord(key.name_of(key.tonic) + ("m" if key.mode == "minor" else ""))
    return out


def _default_form(total_bars: int, mode: str | None) -> list[tuple[str, int]]:
    body = "theme" if mode == "melody-only" else "verse"
    if total_bars < 6:
        return [(body, 0)]
    edge = max(1, total_bars // 8)
    form, bar = [("intro", 0)], edge
    while bar < total_bars - edge:
        form.append((body if len(form) % 2 else "chorus", bar))
        bar += 8
    return form + [("outro", total_bars - edge)]


def _section_lines(plan: SongPlan, sections: list[PlanSection]) -> list[list[str]]:
    """Lyric lines of each section: its own lyrics, else the plan's ``[name]`` blocks in order."""
    own = [_lines(s.lyrics) for s in sections]
    if any(own) or not plan.lyrics.strip():
        return own
    blocks = re.findall(r"\[([^\]\n]+)\]\s*\n(.*?)(?=\n\s*\[|\Z)", plan.lyrics, flags=re.DOTALL)
    for name, text in blocks:
        target = next((i for i, s in enumerate(sections) if s.name == name.strip() and not own[i]), None)
        if target is not None:
            own[target] = _lines(text)
    return own


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines()
            if line_syllables(line) and not line.strip().startswith("[")]


# -- writing notes --------------------------------------------------------------------------


class _Writer:
    """Adds notes by beat position to the tracks of a PrettyMIDI, and counts them."""

    def __init__(self, midi: Any, beat_s: float, energy: float) -> None:
        self.midi, self.beat_s, self.energy = midi, beat_s, energy
        self.counts: list[int] = []

    def track(self, part: Part) -> Any:
        import pretty_midi

        instrument = pretty_midi.Instrument(program=part.program, is_drum=part.role == "drums",
                                            name=f"{part.role}: {part.source}")
        self.midi.instruments.append(instrument)
        self.counts.append(0)
        return instrument

    def note(self, instrument: Any, pitch: int, beat: float, beats: float, velocity: float) -> None:
        import pretty_midi

        vel = max(1, min(127, round(velocity * self.energy)))
        start = beat * self.beat_s
        instrument.notes.append(pretty_midi.Note(vel, int(pitch), start, start + max(0.02, beats * self.beat_s)))
        self.counts[self.midi.instruments.index(instrument)] += 1

    def lyric(self, text: str, beat: float) -> None:
        import pretty_midi

        self.midi.lyrics.append(pretty_midi.Lyric(text, beat * self.beat_s))


def _fade(section: SectionPlan, bar: int) -> float:
    """Velocity scale of a bar: the outro dies away."""
    if section.name != "outro":
        return 1.0
    return 1.0 - 0.45 * bar / max(1, section.bars)


# -- drums ----------------------------------------------------------------------------------

KICK, SNARE, RIM, CLAP, CLOSED, PEDAL, OPEN, CRASH, RIDE, SHAKER, MARACAS, TOM_HI, TOM_MID, TOM_LO = (
    36, 38, 37, 39, 42, 44, 46, 49, 51, 82, 70, 50, 47, 43)


@dataclass(frozen=True)
class Groove:
    """One bar in sixteenths. ``swing`` delays the off-beat eighths by that many beats."""

    kick: tuple[int, ...]
    snare: tuple[int, ...]
    hat: tuple[int, ...]
    snare_note: int = SNARE
    hat_note: int = CLOSED
    swing: float = 0.0
    ghosts: float = 0.1  # chance of a ghost snare on a free sixteenth


EIGHTHS = (0, 2, 4, 6, 8, 10, 12, 14)
GROOVES = {
    "pop": Groove((0, 8, 10), (4, 12), EIGHTHS),
    "rock": Groove((0, 6, 8, 10), (4, 12), EIGHTHS, ghosts=0.05),
    "techno": Groove((0, 4, 8, 12), (4, 12), (2, 6, 10, 14), snare_note=CLAP, hat_note=OPEN, ghosts=0.0),
    "lofi": Groove((0, 7, 10), (4, 12), EIGHTHS, swing=0.1, ghosts=0.15),
    "jazz": Groove((0, 8), (), (0, 4, 6, 8, 12, 14), hat_note=RIDE, swing=1 / 6, ghosts=0.2),
    "ambient": Groove((0, 8), (4, 12), EIGHTHS, snare_note=RIM, hat_note=MARACAS, ghosts=0.0),
    "cinematic": Groove((0, 8), (4, 12), (), ghosts=0.0),
    "folk": Groove((0, 8), (4, 12), EIGHTHS, snare_note=RIM, hat_note=SHAKER, ghosts=0.0),
}


def _drums(w: _Writer, inst: Any, rng: random.Random, style: str, section: SectionPlan,
           following: str | None) -> None:
    groove = GROOVES[style]
    density = DENSITY.get(section.name, 1)
    for bar in range(section.bars):
        at = (section.start_bar + bar) * 4
        fade = _fade(section, bar)
        kick, snare, hat = groove.kick, groove.snare, groove.hat
        if density == 0:
            kick, snare, hat = (0, 8), (4, 12), tuple(s for s in hat if s % 4 == 0)  # the beats, softly
        elif section.name == "bridge":
            kick, snare = (0,), (8,)  # half time
        fill = bar == section.bars - 1 and following is not None and following != "outro" and density > 0 and (
            following == "chorus" or rng.random() < 0.5)

        def hit(step: int, note: int, velocity: float, at: int = at, fade: float = fade) -> None:
            swing = groove.swing if step % 4 == 2 else 0.0
            w.note(inst, note, at + step / 4 + swing, 0.25, (velocity + rng.uniform(-6, 6)) * fade)

        level = (0.7, 0.88, 1.0)[density]
        for step in kick:
            hit(step, KICK, 108 * level)
        for step in snare:
            if not (fill and step >= 12):
                hit(step, groove.snare_note, 100 * level)
        for step in hat:
            hit(step, groove.hat_note, (80 if step % 4 == 0 else 62) * level)
        if style == "jazz":
            for step in (4, 12):
                hit(step, PEDAL, 60 * level)
        if density == 2 and style not in ("techno", "jazz"):
            hit(14, OPEN, 70)
        if bar == 0 and (density == 2 or (section.start_bar > 0 and density == 1 and rng.random() < 0.5)):
            hit(0, CRASH, 96 * level)
        if density > 0 and groove.ghosts:
            busy = set(kick) | set(snare)
            for step in range(16):
                if step not in busy and step % 2 == 1 and rng.random() < groove.ghosts:
                    hit(step, groove.snare_note, 34)
        if fill:
            toms = rng.choice(((SNARE, SNARE, SNARE, SNARE), (TOM_HI, TOM_HI, TOM_MID, TOM_LO),
                               (SNARE, TOM_HI, TOM_MID, TOM_LO)))
            for i, note in enumerate(toms):
                hit(12 + i, note, 78 + 8 * i)
    if section.name == "outro" and section.bars:
        w.note(inst, CRASH, (section.start_bar + section.bars - 1) * 4, 1, 70)


# -- bass -----------------------------------------------------------------------------------


def _bass_pitch(pc: int) -> int:
    """A pitch class in the bass's home octave, C2..B2: lower, the SoundFont's basses lose their
    fundamental and the lowest roots would sound weaker than the rest."""
    return 36 + pc % 12


def _bass(w: _Writer, inst: Any, rng: random.Random, key: Key, style: str, section: SectionPlan,
          program: int) -> None:
    density = DENSITY.get(section.name, 1)
    for bar in range(section.bars):
        chord, following = section.chord(bar), section.chord(bar + 1)
        at = (section.start_bar + bar) * 4
        fade = _fade(section, bar)
        root, fifth = _bass_pitch(chord.bass), _bass_pitch(chord.root) + 7
        if density == 0:  # intro and outro hold a tonic pedal under the chords: they set out the key
            root = fifth = _bass_pitch(key.tonic)
        pattern: list[tuple[float, float, int]]  # (beat, beats, pitch)
        if program == 47:  # timpani: a roll of roots on the strong beats
            pattern = [(0, 1, root), (2, 1, root)] if density else [(0, 2, root)]
        elif density == 0 or style == "ambient":
            pattern = [(0, 4, root)] if density < 2 else [(0, 2, root), (2, 2, root)]
        elif style == "jazz":
            tones = sorted(_bass_pitch(chord.root) + i for i in chord.intervals[1:3])
            target = _bass_pitch(following.bass)
            approach = target + rng.choice((-1, 1))
            pattern = [(0, 1, root), (1, 1, tones[0]), (2, 1, tones[-1]), (3, 1, approach)]
        elif style == "techno":
            pattern = [(b + 0.5, 0.4, root) for b in range(4)] + ([(0, 0.4, root)] if density == 2 else [])
        elif style == "rock" or density == 2:
            pattern = [(b / 2, 0.45, root + (12 if b in (3, 7) and rng.random() < 0.4 else 0)) for b in range(8)]
        else:
            pattern = [(0, 1.5, root), (1.5, 0.5, root), (2, 1.5, root), (3.5, 0.5, rng.choice((root, fifth)))]
        for beat, beats, pitch in pattern:
            w.note(inst, pitch, at + beat, beats, (92 + rng.uniform(-5, 5)) * fade)


# -- harmony and pads -----------------------------------------------------------------------

HELD = ((0.0, 4.0),)
HALVES = ((0.0, 2.0), (2.0, 2.0))
STABS = ((0.0, 1.5), (1.5, 1.0), (2.5, 1.5))
PULSE = ((0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 1.0))
OFFBEATS = ((0.5, 0.3), (1.5, 0.3), (2.5, 0.3), (3.5, 0.3))
COMPING = ((0.0, 1.0), (1.5, 0.5), (3.0, 0.75))
LAZY = ((0.0, 2.5), (2.5, 1.5))
#: Rhythm of the chord part per style, for groove and full sections ("arp": eighth-note arpeggio).
HARMONY_RHYTHM: dict[str, tuple[Any, Any]] = {
    "pop": (STABS, PULSE), "rock": (HALVES, PULSE), "techno": (OFFBEATS, OFFBEATS), "lofi": (LAZY, STABS),
    "jazz": (COMPING, COMPING), "ambient": (HELD, HELD), "cinematic": (HELD, PULSE), "folk": ("arp", "arp"),
}


def _chord_tones(key: Key, chord: Chord, style: str) -> tuple[int, ...]:
    """Intervals of the chord as played: lo-fi and jazz add the key's seventh to a bare triad."""
    if style in ("lofi", "jazz") and len(chord.intervals) == 3:
        for seventh in (10, 11):
            if (chord.root + seventh) % 12 in key.scale:
                return (*chord.intervals, seventh)
    return chord.intervals


def _voicing(chord: Chord, intervals: tuple[int, ...], previous: list[int] | None, centre: int) -> list[int]:
    """Close voicing of the chord near ``previous`` (smooth voice leading) or ``centre``."""
    pcs = sorted({(chord.root + i) % 12 for i in intervals})
    options = []
    for inversion in range(len(pcs)):
        order = pcs[inversion:] + pcs[:inversion]
        for octave in range(3, 6):
            notes = [12 * octave + order[0]]
            for pc in order[1:]:
                notes.append(notes[-1] + (pc - notes[-1]) % 12)
            if notes[0] >= 48 and notes[-1] <= 79:
                options.append(notes)
    reference = previous or [centre] * len(pcs)

    def distance(notes: list[int]) -> float:
        return abs(sum(notes) / len(notes) - sum(reference) / len(reference)) + 0.1 * (notes[0] - centre) ** 2 / 12

    return min(options, key=distance)


def _harmony(w: _Writer, inst: Any, key: Key, style: str, section: SectionPlan) -> None:
    density = DENSITY.get(section.name, 1)
    previous: list[int] | None = None
    for bar in range(section.bars):
        chord = section.chord(bar)
        at = (section.start_bar + bar) * 4
        notes = _voicing(chord, _chord_tones(key, chord, style), previous, 60)
        previous = notes
        rhythm = HELD if density == 0 or section.name == "bridge" else HARMONY_RHYTHM[style][density - 1]
        velocity = (58, 70, 80)[density] * _fade(section, bar)
        if rhythm == "arp":
            cycle = notes + notes[-2:0:-1]
            for i in range(8):
                w.note(inst, cycle[i % len(cycle)], at + i / 2, 0.9, velocity)
            continue
        for beat, beats in rhythm:
            for pitch in notes:
                w.note(inst, pitch, at + beat, beats * 0.95, velocity - (0 if beat % 1 == 0 else 8))


def _pad(w: _Writer, inst: Any, key: Key, section: SectionPlan) -> None:
    density = DENSITY.get(section.name, 1)
    previous: list[int] | None = None
    for bar in range(section.bars):
        chord = section.chord(bar)
        notes = _voicing(chord, chord.intervals, previous, 67)
        previous = notes
        for pitch in (notes[0] - 12, *notes):  # the root doubled below: a wide, warm bed
            w.note(inst, pitch, (section.start_bar + bar) * 4, 4, (44, 52, 64)[density] * _fade(section, bar))


# -- lead -----------------------------------------------------------------------------------


def _rhythm(count: int, span: float, rng: random.Random) -> list[tuple[float, float]]:
    """(offset, length) in beats of ``count`` notes in a phrase of ``span`` beats: the coarsest grid
    that fits with a breath at the end, some notes lengthened, the last one held."""
    for rest, step in ((1.0, 1.0), (1.0, 0.5), (0.5, 0.5), (1.0, 0.25), (0.5, 0.25)):
        usable = span - rest
        if usable > 0 and count * step <= usable + 1e-9:
            break
    else:  # more syllables than sixteenths: an even division of nearly the whole phrase
        usable = span * 0.9
        step = usable / count
    lengths = [step] * count
    slack = usable - count * step
    for i in sorted(range(count - 1), key=lambda _: rng.random()):
        if slack < step - 1e-9:
            break
        if rng.random() < 0.5:
            lengths[i] += step
            slack -= step
    lengths[-1] += slack
    offsets, position = [], 0.0
    for length in lengths:
        offsets.append((position, length))
        position += length
    return offsets


def _lead(w: _Writer, inst: Any, key: Key, section: SectionPlan, *, seed: int) -> None:
    """One phrase per lyric line (a note per syllable), or two-bar instrumental phrases.

    Strong beats and phrase ends land on chord tones, the tonic triad's when the chord has
    them, and a section's last phrase comes home to the tonic where the chord allows."""
    home = 60 + key.tonic  # the tonic in the fourth octave (C4..B4)
    compass = range(home - 5, home + 13)
    scale = [p for p in compass if p % 12 in key.scale]
    triad = {key.tonic, (key.tonic + (3 if key.mode == "minor" else 4)) % 12, (key.tonic + 7) % 12}
    if section.lines:
        syllables = [line_syllables(line) for line in section.lines]
        phrases = [[(word if k == 0 else None) for word, n in words for k in range(n)] for words in syllables]
    else:  # instrumental: phrases A and B alternate, so the tune repeats
        phrases = [[None] * random.Random(f"{seed}:{section.name}:{i % 2}").randint(5, 9)
                   for i in range(max(1, section.bars // 2))]
    per_line = section.bars * 4 / len(phrases)
    if per_line >= 4:
        per_line = 4 * math.floor(per_line / 4)  # phrases start on downbeats
    pitch = home + (4 if section.name == "chorus" else 0)
    for index, phrase in enumerate(phrases):
        rng = random.Random(f"{seed}:{section.name}:{index if section.lines else index % 2}")
        start = section.start_bar * 4 + index * per_line
        notes = _rhythm(len(phrase), per_line, rng)
        for i, ((offset, length), word) in enumerate(zip(notes, phrase, strict=True)):
            beat = start + offset
            chord = section.chord(int(beat // 4) - section.start_bar)
            step = rng.choice((-2, -1, -1, 0, 1, 1, 2)) + (1 if i < len(notes) / 2 and rng.random() < 0.3 else 0)
            nearest = min(range(len(scale)), key=lambda k: abs(scale[k] - pitch))
            pitch = scale[max(0, min(len(scale) - 1, nearest + step))]
            final = i == len(notes) - 1
            if final or beat % 2 == 0:
                tones = [p for p in compass if p % 12 in chord.pitch_classes]
                if final and index == len(phrases) - 1 and key.tonic in chord.pitch_classes:
                    tones = [p for p in tones if p % 12 == key.tonic]
                pitch = min(tones, key=lambda p: (abs(p - pitch) - (2 if p % 12 in triad else 0), p))
            w.note(inst, pitch, beat, length * 0.92, (86 if section.name == "chorus" else 78) + rng.uniform(-4, 4))
            if word is not None:
                w.lyric(word, beat)


# -- the task -------------------------------------------------------------------------------


def midi_bytes(midi: Any) -> bytes:
    import io

    buf = io.BytesIO()
    midi.write(buf)
    return buf.getvalue()


@task("arrange_music", plane="python", params=ArrangeParams, gpu=False, kind="music",
      title="Compose and render an arrangement (FluidSynth)")
def arrange_music(ctx: TaskContext, p: ArrangeParams) -> dict[str, Any]:
    """Arrange a song plan (key, tempo, chords, sections, lyrics, instruments) and render it with FluidSynth."""
    from dualplane.ml.audio import wav_bytes
    from dualplane.tasks.audio_files import put_audio
    from dualplane.tasks.soundfont_render import finish, fluidsynth_exe, render, resolve_soundfont

    soundfont = resolve_soundfont(p.soundfont)
    fluidsynth_exe()  # fail before composing, not after
    duration_s = track_duration(p.plan, p.duration_s)
    assert duration_s is not None  # ArrangeParams checked it
    started = time.perf_counter()
    ctx.progress(0.0, "arranging")
    arrangement = arrange(p.plan, seed=p.seed, duration_s=duration_s, melody=p.melody)
    midi = midi_bytes(arrangement.midi)
    ctx.check_cancelled()

    ctx.progress(0.1, "rendering")

    def rendered(fraction: float) -> None:
        ctx.progress(0.1 + 0.7 * fraction)

    samples = render(midi, soundfont, p.sample_rate, expected_s=duration_s, check_cancelled=ctx.check_cancelled,
                     progress=rendered)
    audio = finish(samples, p.sample_rate, duration_s, fade_s=min(3.0, duration_s / 10))
    render_s = time.perf_counter() - started
    ctx.check_cancelled()

    ctx.progress(0.85, "storing")
    midi_ref = ctx.put_artifact_nowait("music.mid", midi, "audio/midi")
    out = put_audio(ctx, "music", wav_bytes(audio, p.sample_rate), sample_rate=p.sample_rate, channels=2,
                    duration_s=duration_s)
    bar_s = arrangement.bar_s
    out.update({
        "midi": ctx.wait(midi_ref)["key"],
        "bpm": arrangement.bpm,
        "key": arrangement.key.name,
        "chords": arrangement.chords,
        "sections": [{"name": s.name, "start_s": round(s.start_bar * bar_s, 3), "bars": s.bars,
                      "duration_s": round(min(s.bars * bar_s, duration_s - s.start_bar * bar_s), 3),
                      "chords": [c.symbol for c in s.chords], "lyric_lines": len(s.lines)}
                     for s in arrangement.sections],
        "tracks": [{"role": part.role, "instrument": part.instrument, "program": part.program,
                    "from": part.source, "notes": notes}
                   for part, notes in zip(arrangement.parts, arrangement.notes, strict=True)],
        "model": "fluidsynth-gm",
        "soundfont": soundfont.name,
        "seed": p.seed,
        "render_s": round(render_s, 3),
    })
    ctx.progress(1.0, "done")
    return out


__all__ = ["ArrangeParams", "Arrangement", "SongPlan", "arrange", "arrange_music"]
