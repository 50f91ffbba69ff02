"""``plan_song`` (control plane): a narrative becomes a song plan — title, key, tempo, chords,
sections with their lyrics, instrumentation, palette and the prompts of the music and video
nodes. ``arrange_music`` plays the plan, ``visualize_audio`` shows its lyrics in time.

Deterministic: the same params always give the same plan (rules and the lyric bank of
:mod:`dualplane.tasks.lyrics`, no model call), so plans are reproducible, testable, and the
planner can show a plan's lyrics before the job runs.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY
from dualplane.tasks.lyrics import themes_in, write_lyrics

#: Genre rules: keywords → (genre, tempo bpm, instrumentation, mode of the key). First match wins.
GENRES: tuple[tuple[tuple[str, ...], str, int, tuple[str, ...], str], ...] = (
    (("lo-fi", "lofi", "lo fi", "chill", "study", "chillhop"), "lo-fi hip hop", 78,
     ("dusty drums", "warm piano", "soft bass"), "minor"),
    (("jazz", "sax", "swing", "bebop"), "jazz", 110, ("upright bass", "brushed drums", "piano", "saxophone"), "major"),
    (("techno", "rave", "club", "edm", "house", "trance", "dance"), "techno", 128,
     ("kick drum", "analog synth bass", "hi-hats", "pads"), "minor"),
    (("ambient", "drone", "space", "calm", "meditation"), "ambient", 70,
     ("pads", "granular textures", "soft piano"), "major"),
    (("rock", "guitar", "punk", "grunge", "metal"), "rock", 140, ("electric guitar", "bass", "live drums"), "minor"),
    (("orchestra", "orchestral", "epic", "cinematic", "film", "soundtrack", "score"), "cinematic orchestral", 90,
     ("strings", "brass", "timpani"), "minor"),
    (("folk", "acoustic", "campfire", "country"), "acoustic folk", 96,
     ("acoustic guitar", "upright bass", "harmonica"), "major"),
    (("hip hop", "hip-hop", "rap", "trap", "boom bap"), "hip hop", 90, ("drums", "bass", "synth", "piano"), "minor"),
    (("synthwave", "retrowave", "80s", "synthpop", "synth-pop"), "synthwave", 110,
     ("synth", "synth bass", "drums", "pads"), "minor"),
    (("blues",), "blues", 84, ("electric guitar", "bass", "drums", "organ"), "major"),
    (("reggae", "ska"), "reggae", 76, ("guitar", "bass", "drums", "organ"), "major"),
    (("classical", "piano solo", "sonata", "waltz"), "classical", 88, ("piano", "strings"), "major"),
    (("funk", "disco", "groove"), "funk", 112, ("bass", "drums", "electric guitar", "brass"), "minor"),
    (("soul", "r&b", "rnb", "gospel"), "soul", 92, ("electric piano", "bass", "drums", "organ"), "major"),
)
DEFAULT_GENRE = ("pop", 100, ("drums", "bass", "synth", "piano"), "major")
#: Mood words recognised in a narrative, in the order they are preferred.
MOODS = ("rainy", "night", "sunny", "melancholic", "happy", "dreamy", "dark", "nostalgic", "calm", "upbeat",
         "romantic", "lonely", "energetic", "peaceful", "sad", "hopeful", "mysterious", "epic", "city", "ocean",
         "forest", "summer", "winter")
#: Tonic a key mode gets when no key was asked for (comfortable for the lead's range).
_TONICS = {"minor": ("A", "D", "E", "C", "G"), "major": ("C", "G", "F", "D", "A")}
#: Progressions (scale degrees, 1-based) per mode, one chord per bar: each starts on the tonic and
#: turns on the dominant, so the key is the one heard (a vi-IV-I-V loop reads as the relative minor).
_PROGRESSIONS = {"major": ((1, 5, 6, 4), (1, 6, 4, 5), (1, 4, 5, 4)),
                 "minor": ((1, 6, 4, 5), (1, 4, 6, 5), (1, 7, 6, 5))}
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
#: Every name the ``key`` pattern admits, the enharmonic ones (Cb, Fb, E#, B#) included.
_SEMITONES = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7,
              "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11, "Cb": 11, "Fb": 4, "E#": 5, "B#": 0}
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
#: Chord quality of each scale degree (1-based) in a mode.
#: (Minor uses the harmonic minor's major V: the leading tone is what makes a minor key sound minor.)
_QUALITIES = {"major": ("", "m", "m", "", "", "m", "dim"), "minor": ("m", "dim", "", "m", "", "", "")}
#: Palette words per theme, for the visuals.
PALETTES = {"rain": "rainy blue grey", "night": "midnight indigo", "city": "neon magenta cyan",
            "ocean": "ocean teal", "summer": "sunset orange pink", "winter": "icy white blue",
            "love": "rose red", "lonely": "muted grey blue", "road": "amber dusk", "space": "cosmic violet",
            "nature": "forest green", "home": "warm sepia", "party": "neon rainbow", "strength": "fire red gold",
            "dreams": "pastel lavender"}
#: Most lines a plan's lyrics carry (synthesis reads them in one node).
MAX_LYRICS_CHARS = 2000


class SongParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    narrative: str = Field(..., min_length=1, max_length=2000, description="What the song is about.")
    duration_s: float = Field(30.0, gt=0, le=600, description="Target length in seconds.")
    style: str | None = Field(None, max_length=200, description="Genre or style; guessed from the narrative if absent.")
    mode: Literal["lyrics-first", "melody-only"] = Field(
        "lyrics-first", description="lyrics-first writes lyrics per section; melody-only plans an instrumental.")
    seed: int = Field(0, ge=0, description="Varies the lyrics, key and progression deterministically.")
    title: str | None = Field(None, max_length=200, description="The song's title; written from the theme if absent.")
    lyrics: str | None = Field(None, max_length=MAX_LYRICS_CHARS,
                               description="The user's lyrics, verbatim (lines; blank lines between sections); "
                                           "written from the theme if absent.")
    sung_sections: list[Literal["verse", "chorus", "bridge"]] = Field(
        default_factory=list, description="Only these sections get words (e.g. just a chorus); empty: all.")
    bpm: int | None = Field(None, ge=30, le=300, description="Tempo; from the genre if absent.")
    key: str | None = Field(None, pattern=r"^[A-G](#|b)? (major|minor)$", description="e.g. 'A minor'.")
    moods: list[str] = Field(default_factory=list, max_length=8, description="Mood words; read from the narrative if empty.")
    instrumentation: list[str] = Field(default_factory=list, max_length=16,
                                       description="Instruments; from the genre if empty.")
    without: list[str] = Field(default_factory=list, max_length=16, description="Instruments to leave out.")


@task("plan_song", plane="control", params=SongParams, retry=NO_RETRY, kind="planning",
      title="Plan a song (title, key, chords, lyrics)")
async def plan_song(ctx: TaskContext, p: SongParams) -> dict[str, Any]:
    """Plan a song from a narrative: title, key, tempo, chords, sections with lyrics, music and video prompts."""
    return make_plan(p)


def make_plan(p: SongParams) -> dict[str, Any]:
    text = f"{p.narrative} {p.style or ''}".lower()
    genre, genre_bpm, genre_instruments, genre_mode = _genre(text)
    bpm = p.bpm or genre_bpm
    moods = p.moods or [m for m in MOODS if _has_word(text, m)][:3] or ["warm"]
    rng = random.Random(f"{p.narrative}|{p.seed}")
    key = p.key or _default_key(genre_mode, moods, rng)
    tonic, mode = key.split(" ")
    progression = _chords(tonic, mode, rng.choice(_PROGRESSIONS[mode]))
    instrumental = p.mode == "melody-only"
    sections = _sections(p.duration_s, bpm, instrumental=instrumental)
    title = p.title
    if not instrumental:
        title = _lyrics_into(sections, p, title)
    else:
        title = title or write_lyrics(p.narrative, [], seed=p.seed)["title"]
    for section in sections:
        section["chords"] = progression
    instruments = [i for i in (p.instrumentation or list(genre_instruments))
                   if not any(w.lower() in i.lower() for w in p.without)] or ["piano"]
    lyrics = "\n\n".join(f"[{s['name']}]\n{s['lyrics']}" for s in sections if s.get("lyrics"))
    mood = ", ".join(moods)
    themes = themes_in(p.narrative)
    return {
        "title": title,
        "genre": genre,
        "bpm": bpm,
        "key": key,
        "mood": mood,
        "mode": p.mode,
        "duration_s": p.duration_s,
        "chords": progression,
        "sections": sections,
        "lyrics": lyrics,
        "vocals_start_s": next((s["start_s"] for s in sections if s.get("lyrics")), 0.0),
        "lyrics_text": "\n".join(s["lyrics"] for s in sections if s.get("lyrics"))[:MAX_LYRICS_CHARS],
        "instrumentation": instruments,
        "without": list(p.without),
        "palette": PALETTES.get(themes[0], "warm amber") if themes else "warm amber",
        "music_prompt": f"{genre} track, {mood}, {', '.join(instruments)}, {bpm} bpm, {key}"
                        + ("" if not instrumental else ", instrumental"),
        "video_prompt": f"{p.narrative.strip()}, {mood} atmosphere, cinematic, soft light",
    }


def _lyrics_into(sections: list[dict[str, Any]], p: SongParams, title: str | None) -> str:
    """Put lyrics into the sung sections: the user's (verbatim, one block per section) or written."""
    sung = [s for s in sections if s["name"] in ("verse", "chorus", "bridge")
            and (not p.sung_sections or s["name"] in p.sung_sections)]
    if p.lyrics:
        blocks = [b.strip() for b in p.lyrics.replace("\r\n", "\n").split("\n\n") if b.strip()]
        if len(blocks) == 1 and len(sung) > 1:
            lines = blocks[0].splitlines()
            per = max(1, -(-len(lines) // len(sung)))
            blocks = ["\n".join(lines[i:i + per]) for i in range(0, len(lines), per)]
        for section, block in zip(sung, blocks, strict=False):
            section["lyrics"] = block
        leftover = blocks[len(sung):]
        if leftover and sung:  # more verses than the form has room for: the last sung section keeps them
            sung[-1]["lyrics"] += "\n" + "\n".join(leftover)
        return title or _first_line_title(blocks[0] if blocks else p.narrative)
    song = write_lyrics(p.narrative, [s["name"] for s in sections], seed=p.seed, title=title, only=p.sung_sections)
    for section, written in zip(sections, song["sections"], strict=True):
        if written["lines"]:
            section["lyrics"] = "\n".join(written["lines"])
    return str(song["title"])


def _first_line_title(text: str) -> str:
    words = text.strip().splitlines()[0].split()[:5]
    return " ".join(words).strip(",.;:!?").title() or "Untitled"


def _genre(text: str) -> tuple[str, int, tuple[str, ...], str]:
    for keywords, genre, bpm, instruments, mode in GENRES:
        if any(_has_word(text, k) for k in keywords):
            return genre, bpm, instruments, mode
    return DEFAULT_GENRE[0], DEFAULT_GENRE[1], DEFAULT_GENRE[2], DEFAULT_GENRE[3]


def _has_word(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words ("sad" is not in "crusade")."""
    start = text.find(phrase)
    while start >= 0:
        end = start + len(phrase)
        if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        start = text.find(phrase, start + 1)
    return False


def _default_key(genre_mode: str, moods: list[str], rng: random.Random) -> str:
    dark = {"melancholic", "dark", "sad", "lonely", "rainy", "night", "mysterious"}
    bright = {"happy", "sunny", "upbeat", "summer", "hopeful", "energetic"}
    mode = "minor" if dark & set(moods) else "major" if bright & set(moods) else genre_mode
    return f"{rng.choice(_TONICS[mode])} {mode}"


def _chords(tonic: str, mode: str, degrees: tuple[int, ...]) -> list[str]:
    root = _SEMITONES[tonic]
    scale = _SCALES[mode]
    return [_NOTE_NAMES[(root + scale[d - 1]) % 12] + _QUALITIES[mode][d - 1] for d in degrees]


def _sections(duration_s: float, bpm: int, *, instrumental: bool) -> list[dict[str, Any]]:
    """The song's form, each section a whole number of 4/4 bars where the length allows."""
    if duration_s >= 150:
        names = ["intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"]
    elif duration_s >= 45:
        names = ["intro", "verse", "chorus", "verse", "chorus", "outro"]
    elif duration_s >= 12:
        names = ["intro", "verse", "chorus", "outro"]
    else:
        names = ["verse", "chorus"]
    if instrumental:
        names = [n if n not in ("verse", "bridge") else "theme" for n in names]
    weights = {"intro": 1, "outro": 1, "verse": 2, "theme": 2, "chorus": 2, "bridge": 1}
    total = sum(weights[n] for n in names)
    bar_s = 4 * 60.0 / bpm
    sections: list[dict[str, Any]] = []
    start = 0.0
    for index, name in enumerate(names):
        if index == len(names) - 1:
            length = duration_s - start  # the last section ends exactly on time
        else:
            share = duration_s * weights[name] / total
            length = max(bar_s, round(share / bar_s) * bar_s) if share >= bar_s else share
            length = min(length, duration_s - start)
        sections.append({"name": name, "start_s": round(start, 3), "duration_s": round(max(length, 0.0), 3),
                         "bars": max(1, round(length / bar_s))})
        start += length
    return [s for s in sections if s["duration_s"] > 0]


__all__ = ["GENRES", "MOODS", "PALETTES", "SongParams", "make_plan", "plan_song"]
