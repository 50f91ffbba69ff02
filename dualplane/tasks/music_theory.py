"""Keys, scales, chord symbols and syllables: the vocabulary the arranger composes with.

Pure Python and cheap to import (the control plane validates arrangement params with it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Pitch class of each natural note.
NATURALS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
#: Semitones above the tonic of each scale degree.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
#: Tonics whose key signatures have flats, so their chords are spelled with flats.
FLAT_TONICS = {"major": {5, 10, 3, 8, 1, 6}, "minor": {2, 7, 0, 5, 10, 3}}

#: Chord qualities (the text after the root) → semitones above the root.
QUALITIES: dict[str, tuple[int, ...]] = {
    "": (0, 4, 7), "maj": (0, 4, 7), "m": (0, 3, 7), "min": (0, 3, 7), "-": (0, 3, 7),
    "5": (0, 7), "6": (0, 4, 7, 9), "m6": (0, 3, 7, 9), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
    "M7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "min7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
    "dim": (0, 3, 6), "dim7": (0, 3, 6, 9), "aug": (0, 4, 8), "+": (0, 4, 8), "sus2": (0, 2, 7),
    "sus4": (0, 5, 7), "sus": (0, 5, 7), "9": (0, 4, 7, 10, 14), "maj9": (0, 4, 7, 11, 14),
    "m9": (0, 3, 7, 10, 14), "add9": (0, 4, 7, 14),
}
_NOTE = r"([A-G])([#b]?)"
_CHORD = re.compile(rf"^{_NOTE}({'|'.join(re.escape(q) for q in sorted(QUALITIES, key=len, reverse=True))})"
                    rf"(?:/{_NOTE})?$")
_KEY = re.compile(rf"^{_NOTE}\s*(major|minor|maj|min|m)?$", re.IGNORECASE)

#: Default progressions as (scale degree, quality) per bar: the minor ones use the harmonic
#: minor's major V, whose leading tone is what makes a minor key sound like itself.
DEFAULT_PROGRESSIONS = {
    "major": {"main": ((0, ""), (4, ""), (5, "m"), (3, "")), "chorus": ((3, ""), (4, ""), (0, ""), (5, "m")),
              "bridge": ((5, "m"), (3, ""), (0, ""), (4, ""))},
    "minor": {"main": ((0, "m"), (5, ""), (3, "m"), (4, "")), "chorus": ((5, ""), (6, ""), (0, "m"), (0, "m")),
              "bridge": ((3, "m"), (0, "m"), (5, ""), (4, ""))},
}


def _pc(letter: str, accidental: str) -> int:
    return (NATURALS[letter.upper()] + {"#": 1, "b": -1, "": 0}[accidental]) % 12


@dataclass(frozen=True)
class Key:
    tonic: int  # pitch class
    mode: str  # "major" | "minor"

    @property
    def scale(self) -> tuple[int, ...]:
        """Pitch classes of the scale, from the tonic."""
        return tuple((self.tonic + step) % 12 for step in SCALES[self.mode])

    def name_of(self, pc: int) -> str:
        names = FLAT_NAMES if self.tonic in FLAT_TONICS[self.mode] else SHARP_NAMES
        return names[pc % 12]

    @property
    def name(self) -> str:
        return f"{self.name_of(self.tonic)} {self.mode}"

    def default_progression(self, part: str) -> list[str]:
        """Chord symbols of the default progression of a part ("main", "chorus", "bridge")."""
        chords = []
        for degree, quality in DEFAULT_PROGRESSIONS[self.mode][part]:
            root = (self.tonic + SCALES[self.mode][degree]) % 12
            chords.append(self.name_of(root) + quality)
        return chords


def parse_key(text: str) -> Key:
    """``"A minor"``, ``"F# major"``, ``"Bb"`` (major), ``"Am"`` → :class:`Key`; ValueError otherwise."""
    match = _KEY.match(text.strip())
    if not match:
        raise ValueError(f"key {text!r}: expected a tonic and major/minor, e.g. 'A minor'")
    letter, accidental, mode = match.groups()
    return Key(_pc(letter, accidental), "minor" if (mode or "").lower() in ("minor", "min", "m") else "major")


@dataclass(frozen=True)
class Chord:
    symbol: str
    root: int  # pitch class
    intervals: tuple[int, ...]
    bass: int  # pitch class of the bass note (the root unless a slash chord)

    @property
    def pitch_classes(self) -> tuple[int, ...]:
        return tuple(sorted({(self.root + i) % 12 for i in self.intervals}))


def parse_chord(symbol: str) -> Chord:
    """``"Am"``, ``"F#m7"``, ``"Bb/D"``, ``"Gsus4"`` → :class:`Chord`; ValueError otherwise."""
    match = _CHORD.match(symbol.strip())
    if not match:
        raise ValueError(f"chord {symbol!r}: expected a root (A-G, optional # or b) and a quality such as "
                         f"m, 7, maj7, m7, dim, sus4, optionally /bass")
    letter, accidental, quality, bass_letter, bass_accidental = match.groups()
    root = _pc(letter, accidental)
    bass = _pc(bass_letter, bass_accidental or "") if bass_letter else root
    return Chord(symbol.strip(), root, QUALITIES[quality], bass)


def syllables(word: str) -> int:
    """Estimated syllables of an English word: vowel groups, less a silent final e or -ed.

    A heuristic (no dictionary on the worker): right for most common words, off by one for
    some (``quiet``); a melody with one note more or less still fits its line."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    count = len(re.findall(r"[aeiouy]+", w))
    silent_e = w.endswith("e") and not w.endswith(("le", "ee", "ye"))
    silent_ed = w.endswith("ed") and not w.endswith(("ted", "ded"))
    return max(1, count - 1) if count > 1 and (silent_e or silent_ed) else max(1, count)


def line_syllables(line: str) -> list[tuple[str, int]]:
    """(word, syllable count) of each word of a lyric line."""
    return [(word, n) for word in re.findall(r"[A-Za-z']+", line) if (n := syllables(word))]


__all__ = ["Chord", "Key", "line_syllables", "parse_chord", "parse_key", "syllables"]
