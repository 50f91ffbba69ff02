"""A plan's free instrument words ("warm piano", "dusty drums") → General MIDI programs, and
which part of the arrangement each one plays.

The words come from people and from ``plan_song``'s genre table, so matching is by keyword,
most specific first; a word nothing matches still gets a part (a pad), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

#: (keywords, family, GM program; for drums the kit's bank-128 program; None: the style's own).
#: First match wins.
KEYWORDS: tuple[tuple[tuple[str, ...], str, int | None], ...] = (
    (("brush",), "drums", 40),
    (("808", "electronic drum", "drum machine"), "drums", 25),
    (("jazz drum",), "drums", 32),
    (("live drum", "rock drum", "power drum"), "drums", 16),
    (("orchestral percussion",), "drums", 48),
    (("drum", "kit", "hi-hat", "hihat", "hats", "percussion", "beat", "kick", "snare", "cymbal", "shaker"),
     "drums", None),
    (("timpani",), "bass", 47),
    (("upright bass", "acoustic bass", "double bass", "contrabass"), "bass", 32),
    (("synth bass", "analog bass", "analog synth bass", "sub bass", "808 bass"), "bass", 38),
    (("fretless",), "bass", 35),
    (("bass",), "bass", 33),
    (("electric piano", "rhodes", "wurlitzer", "keys"), "keys", 4),
    (("piano",), "keys", 0),
    (("organ",), "keys", 16),
    (("harpsichord",), "keys", 6),
    (("vibraphone", "vibes"), "keys", 11),
    (("marimba",), "keys", 12),
    (("bell", "music box", "celesta", "glockenspiel"), "keys", 10),
    (("nylon", "classical guitar"), "guitar", 24),
    (("acoustic guitar",), "guitar", 25),
    (("distorted", "overdrive", "rock guitar"), "guitar", 30),
    (("electric guitar", "guitar"), "guitar", 27),
    (("harp",), "guitar", 46),
    (("saxophone", "sax"), "lead", 65),
    (("trumpet",), "lead", 56),
    (("flute",), "lead", 73),
    (("clarinet",), "lead", 71),
    (("harmonica",), "lead", 22),
    (("violin", "fiddle"), "lead", 40),
    (("whistle",), "lead", 78),
    (("voice", "vocal", "choir"), "lead", 53),
    (("lead synth", "synth lead", "lead"), "lead", 81),
    (("cello",), "pad", 42),
    (("brass", "horn"), "pad", 61),
    (("strings", "string"), "pad", 48),
    (("texture", "granular", "atmosphere"), "pad", 99),
    (("pad", "ambient", "drone"), "pad", 89),
    (("synth",), "pad", 90),
)

#: Names of the GM drum kits (program in bank 128 on channel 10).
DRUM_KITS = {0: "Standard Kit", 8: "Room Kit", 16: "Power Kit", 24: "Electronic Kit", 25: "TR-808 Kit",
             32: "Jazz Kit", 40: "Brush Kit", 48: "Orchestra Kit"}

#: Per style: kit, bass, harmony and lead programs used where the plan names none.
STYLE_DEFAULTS: dict[str, dict[str, int]] = {
    "pop": {"drums": 0, "bass": 33, "harmony": 0, "lead": 73},
    "rock": {"drums": 16, "bass": 34, "harmony": 29, "lead": 30},
    "techno": {"drums": 25, "bass": 38, "harmony": 90, "lead": 81},
    "lofi": {"drums": 0, "bass": 33, "harmony": 4, "lead": 4},
    "jazz": {"drums": 32, "bass": 32, "harmony": 0, "lead": 65},
    "ambient": {"drums": 8, "bass": 38, "harmony": 89, "lead": 73},
    "cinematic": {"drums": 48, "bass": 47, "harmony": 48, "lead": 73},
    "folk": {"drums": 8, "bass": 32, "harmony": 25, "lead": 22},
}
#: GM "Voice Oohs": a lead standing in for the singer of a lyrics-first song.
VOCAL_LEAD = 53


@dataclass(frozen=True)
class Part:
    role: str  # drums | bass | harmony | pad | lead
    program: int
    source: str  # the plan's word, or "(default)"

    @property
    def instrument(self) -> str:
        if self.role == "drums":
            return DRUM_KITS.get(self.program, f"Drum Kit {self.program}")
        import pretty_midi

        return pretty_midi.program_to_instrument_name(self.program)


def classify(word: str) -> tuple[str, int | None] | None:
    """(family, program) of an instrument word (program None: the style's default); None when
    no keyword matches."""
    text = word.lower()
    for keywords, family, program in KEYWORDS:
        if any(k in text for k in keywords):
            return family, program
    return None


def assign_parts(words: list[str], style: str, *, vocal_lead: bool, with_lead: bool) -> list[Part]:
    """The parts of the arrangement: drums, bass and harmony always (drums carry the tempo),
    a lead when asked, and up to two pads from the rest of the plan's instruments."""
    defaults = STYLE_DEFAULTS[style]
    found: dict[str, Part] = {}
    spare: list[tuple[str, Part]] = []  # (family, part) of words whose role was taken
    for word in words:
        family, program = classify(word) or ("pad", 89)
        role = "harmony" if family in ("keys", "guitar") else family
        program = defaults[role] if program is None else program
        if role == "drums" and "drums" in found:
            continue  # "hi-hats" after "kick drum": the kit is already there
        if role in found:
            spare.append((family, Part("pad", program, word)))
        else:
            found[role] = Part(role, program, word)
    if "harmony" not in found and "pad" in found:
        pad = found.pop("pad")  # strings or a pad carry the chords when nothing chordal is named
        found["harmony"] = Part("harmony", pad.program, pad.source)
    if with_lead and "lead" not in found:
        chordal = next((p for family, p in spare if family in ("keys", "guitar")), None)
        if vocal_lead or chordal is None:
            found["lead"] = Part("lead", VOCAL_LEAD if vocal_lead else defaults["lead"], "(default)")
        else:  # a second piano or guitar takes the tune before a default instrument does
            spare = [(f, p) for f, p in spare if p is not chordal]
            found["lead"] = Part("lead", chordal.program, chordal.source)
    if not with_lead:
        found.pop("lead", None)
    for role in ("drums", "bass", "harmony"):
        found.setdefault(role, Part(role, defaults[role], "(default)"))
    pads = ([found["pad"]] if "pad" in found else []) + [p for _, p in spare]
    return [found[r] for r in ("drums", "bass", "harmony", "lead") if r in found] + pads[:2]


__all__ = ["DRUM_KITS", "Part", "assign_parts", "classify"]
