"""``plan_song`` (control plane): a narrative becomes a song plan — title, sections, lyrics,
instrumentation and the prompts of the music and video nodes.

Deterministic: the same narrative, duration, mode and seed always give the same plan, from
rules and templates below (no model call), so plans are reproducible and testable.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY

#: Genre rules: keywords → (genre, tempo bpm, instrumentation). First match wins.
GENRES: tuple[tuple[tuple[str, ...], str, int, tuple[str, ...]], ...] = (
    (("lo-fi", "lofi", "lo fi", "chill", "study"), "lo-fi hip hop", 78, ("dusty drums", "warm piano", "soft bass")),
    (("jazz", "sax", "swing"), "jazz", 110, ("upright bass", "brushed drums", "piano", "saxophone")),
    (("techno", "rave", "club"), "techno", 128, ("kick drum", "analog synth bass", "hi-hats", "pads")),
    (("ambient", "drone", "space", "calm"), "ambient", 70, ("pads", "granular textures", "soft piano")),
    (("rock", "guitar", "punk"), "rock", 140, ("electric guitar", "bass", "live drums")),
    (("orchestra", "epic", "cinematic", "film"), "cinematic orchestral", 90, ("strings", "brass", "timpani")),
    (("folk", "acoustic", "campfire"), "acoustic folk", 96, ("acoustic guitar", "upright bass", "harmonica")),
)
DEFAULT_GENRE = ("pop", 100, ("drums", "bass", "synth", "piano"))
#: Mood words recognised in a narrative, in the order they are preferred.
MOODS = ("rainy", "night", "sunny", "melancholic", "happy", "dreamy", "dark", "nostalgic", "calm", "upbeat",
         "romantic", "lonely", "city", "ocean", "forest", "summer", "winter")
_LINES = (
    "{a} falls soft on the {b}", "we keep the {b} in our hands", "counting {a} until the morning",
    "the {b} hums a quiet tune", "nothing moves but the {a}", "I found the {b} where we left it",
    "{a} and {b}, all night long", "hold on to the {b} a little longer",
)


class SongParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    narrative: str = Field(..., min_length=1, max_length=2000, description="What the song is about.")
    duration_s: float = Field(30.0, gt=0, le=600, description="Target length in seconds.")
    style: str | None = Field(None, max_length=200, description="Genre or style; guessed from the narrative if absent.")
    mode: Literal["lyrics-first", "melody-only"] = Field(
        "lyrics-first", description="lyrics-first writes lyrics per section; melody-only plans an instrumental.")
    seed: int = Field(0, description="Varies the lyric lines deterministically.")


@task("plan_song", plane="control", params=SongParams, retry=NO_RETRY)
async def plan_song(ctx: TaskContext, p: SongParams) -> dict[str, Any]:
    """Plan a song from a narrative: title, sections, lyrics, instrumentation, music and video prompts."""
    return make_plan(p)


def make_plan(p: SongParams) -> dict[str, Any]:
    text = f"{p.narrative} {p.style or ''}".lower()
    genre, bpm, instruments = _genre(text)
    moods = [m for m in MOODS if m in text][:3] or ["warm"]
    words = _content_words(p.narrative) or moods
    rng = random.Random(f"{p.narrative}|{p.seed}")
    sections = _sections(p.duration_s, instrumental=p.mode == "melody-only")
    if p.mode == "lyrics-first":
        for section in sections:
            section["lyrics"] = _verse(rng, words, lines=2 if section["name"] == "chorus" else 4)
    lyrics = "\n\n".join(f"[{s['name']}]\n{s['lyrics']}" for s in sections if s.get("lyrics"))
    mood = ", ".join(moods)
    return {
        "title": _title(words, genre),
        "genre": genre,
        "bpm": bpm,
        "mood": mood,
        "mode": p.mode,
        "duration_s": p.duration_s,
        "sections": sections,
        "lyrics": lyrics,
        "instrumentation": list(instruments),
        "music_prompt": f"{genre} track, {mood}, {', '.join(instruments)}, {bpm} bpm"
                        + ("" if p.mode == "lyrics-first" else ", instrumental"),
        "video_prompt": f"{p.narrative.strip()}, {mood} atmosphere, cinematic, soft light, loopable",
    }


def _genre(text: str) -> tuple[str, int, tuple[str, ...]]:
    for keywords, genre, bpm, instruments in GENRES:
        if any(k in text for k in keywords):
            return genre, bpm, instruments
    return DEFAULT_GENRE[0], DEFAULT_GENRE[1], DEFAULT_GENRE[2]


def _content_words(narrative: str) -> list[str]:
    stop = {"a", "an", "the", "with", "and", "of", "for", "to", "in", "on", "track", "song", "video", "music",
            "second", "seconds", "minute", "about", "make", "me", "my", "some", "lo", "fi", "lo-fi"}
    words = re.findall(r"[a-z]+", narrative.lower())
    return list(dict.fromkeys(w for w in words if w not in stop and len(w) > 2))


def _sections(duration_s: float, *, instrumental: bool) -> list[dict[str, Any]]:
    names = ["intro", "verse", "chorus", "verse", "chorus", "outro"] if duration_s >= 45 else \
        ["intro", "verse", "chorus", "outro"]
    if instrumental:
        names = [n if n != "verse" else "theme" for n in names]
    weights = {"intro": 1, "outro": 1, "verse": 2, "theme": 2, "chorus": 2}
    total = sum(weights[n] for n in names)
    start = 0.0
    sections = []
    for name in names:
        length = round(duration_s * weights[name] / total, 2)
        sections.append({"name": name, "start_s": round(start, 2), "duration_s": length})
        start += length
    return sections


def _verse(rng: random.Random, words: list[str], *, lines: int) -> str:
    out = []
    for _ in range(lines):
        a, b = rng.choice(words), rng.choice(words)
        out.append(rng.choice(_LINES).format(a=a, b=b))
    return "\n".join(out)


def _title(words: list[str], genre: str) -> str:
    return " ".join(w.capitalize() for w in words[:3]) + f" ({genre})"
