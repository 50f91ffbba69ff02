"""Style words → colours for the visualizer.

The first word that names a palette sets the background, the second (if any) the accents, so
"sunset forest" is a sunset sky with green bars rather than the muddy average of both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Background gradient (top → bottom), accent ramp (quiet → loud) and text colour."""

    top: RGB
    bottom: RGB
    low: RGB
    high: RGB
    text: RGB


_NIGHT = Palette(top=(12, 14, 48), bottom=(30, 22, 82), low=(60, 90, 200), high=(150, 200, 255), text=(225, 232, 255))
_RAIN = Palette(top=(18, 30, 58), bottom=(36, 52, 96), low=(70, 120, 190), high=(170, 210, 240), text=(230, 240, 250))
_SUNSET = Palette(top=(70, 20, 60), bottom=(200, 80, 50), low=(255, 120, 60), high=(255, 190, 210),
                  text=(255, 240, 225))
_FOREST = Palette(top=(10, 36, 20), bottom=(28, 70, 36), low=(60, 150, 70), high=(190, 240, 140), text=(235, 250, 225))
_OCEAN = Palette(top=(4, 40, 60), bottom=(10, 80, 110), low=(30, 170, 190), high=(160, 250, 240), text=(225, 250, 250))
_FIRE = Palette(top=(40, 6, 4), bottom=(110, 24, 8), low=(230, 70, 20), high=(255, 220, 90), text=(255, 240, 210))
_NEON = Palette(top=(16, 4, 30), bottom=(40, 6, 60), low=(255, 40, 180), high=(60, 255, 240), text=(250, 240, 255))
_ICE = Palette(top=(40, 60, 80), bottom=(90, 120, 150), low=(170, 220, 250), high=(245, 252, 255), text=(20, 40, 60))
_GOLD = Palette(top=(36, 24, 6), bottom=(80, 56, 14), low=(200, 150, 40), high=(255, 230, 140), text=(255, 245, 220))
_DREAM = Palette(top=(44, 26, 70), bottom=(110, 70, 140), low=(230, 150, 220), high=(255, 230, 250),
                 text=(255, 245, 255))
#: Used when no word names a palette: neutral violet that reads well under white text.
DEFAULT = Palette(top=(20, 18, 40), bottom=(48, 36, 80), low=(120, 110, 230), high=(240, 200, 255),
                  text=(245, 245, 255))

#: Word → palette. Variants of a word are listed rather than stemmed: stemming maps too much.
WORDS: dict[str, Palette] = {
    **dict.fromkeys(("night", "midnight", "nocturne", "dark", "moon", "moonlight", "indigo", "blue", "space",
                     "stars", "starry"), _NIGHT),
    **dict.fromkeys(("rain", "rainy", "storm", "stormy", "grey", "gray", "melancholy", "sad", "lonely"), _RAIN),
    **dict.fromkeys(("sunset", "sunrise", "dusk", "dawn", "orange", "pink", "warm", "summer", "evening"), _SUNSET),
    **dict.fromkeys(("forest", "woods", "green", "jungle", "nature", "spring", "meadow", "leaf", "leaves"), _FOREST),
    **dict.fromkeys(("ocean", "sea", "wave", "waves", "beach", "teal", "water", "aqua"), _OCEAN),
    **dict.fromkeys(("fire", "flame", "lava", "red", "angry", "rage", "hot", "energy", "rock"), _FIRE),
    **dict.fromkeys(("neon", "cyber", "cyberpunk", "synthwave", "retro", "club", "disco", "electric"), _NEON),
    **dict.fromkeys(("ice", "snow", "winter", "frozen", "cold", "white", "crystal"), _ICE),
    **dict.fromkeys(("gold", "golden", "desert", "sand", "autumn", "amber", "yellow"), _GOLD),
    **dict.fromkeys(("dream", "dreamy", "lullaby", "soft", "lavender", "purple", "pastel", "love"), _DREAM),
}


def pick(style: str) -> tuple[Palette, list[str]]:
    """The palette for free style words and the words that chose it (empty: the default)."""
    matched = [w for w in re.findall(r"[a-z]+", style.lower()) if w in WORDS]
    if not matched:
        return DEFAULT, []
    first = WORDS[matched[0]]
    second = next((WORDS[w] for w in matched[1:] if WORDS[w] is not first), first)
    used = matched[:1] + [w for w in matched[1:] if WORDS[w] is second and second is not first][:1]
    return Palette(top=first.top, bottom=first.bottom, low=second.low, high=second.high, text=first.text), used


def hex_colour(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def describe(palette: Palette, words: list[str]) -> dict[str, object]:
    """What the node's output says about the colours (and which style words were used)."""
    return {
        "words": words,
        "default": not words,
        "background": [hex_colour(palette.top), hex_colour(palette.bottom)],
        "accent": [hex_colour(palette.low), hex_colour(palette.high)],
        "text": hex_colour(palette.text),
    }


__all__ = ["DEFAULT", "WORDS", "Palette", "describe", "pick"]
