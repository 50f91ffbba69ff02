"""Lyrics → timed lines (a lyric video's captions) and their WebVTT file.

Without word timings the honest thing is to spread each section's lines evenly over the
section's span; plain text is spread over the whole track. ``[verse]``-style tags (what
``plan_song`` writes into its combined ``lyrics``) are section labels, not lines to show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TAG = re.compile(r"^\[[^\]]*\]$")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not _TAG.match(line.strip())]


def _spread(lines: list[str], start_s: float, end_s: float) -> list[Cue]:
    if not lines or end_s <= start_s:
        return []
    step = (end_s - start_s) / len(lines)
    return [Cue(round(start_s + i * step, 3), round(start_s + (i + 1) * step, 3), line) for i, line in enumerate(lines)]


def timed_lines(lyrics: str | list[Any] | None, duration_s: float) -> list[Cue]:
    """Cues for plain text or for song-plan sections (objects with ``start_s``, ``duration_s``,
    ``lyrics``), clipped to ``[0, duration_s]``."""
    if not lyrics:
        return []
    if isinstance(lyrics, str):
        return _spread(_lines(lyrics), 0.0, duration_s)
    cues: list[Cue] = []
    for section in lyrics:
        start = min(section.start_s, duration_s)
        cues += _spread(_lines(section.lyrics), start, min(section.start_s + section.duration_s, duration_s))
    return cues


def _stamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def webvtt(cues: list[Cue]) -> str:
    """A WebVTT document of the cues (``-->`` cannot appear in a lyric line's text: it would end the timing)."""
    blocks = [f"{i}\n{_stamp(c.start_s)} --> {_stamp(c.end_s)}\n{c.text.replace('-->', '->')}"
              for i, c in enumerate(cues, 1)]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


__all__ = ["Cue", "timed_lines", "webvtt"]
