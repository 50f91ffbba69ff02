"""Audio longer than a model's window: the plan of windows and the crossfades that join them.

A model that continues from an audio prompt (MusicGen) makes a long track window by window: the
first from the text alone, each next one from the text plus the last seconds of what is there.
Its output starts with those seconds, re-encoded by its codec, so the overlap holds two versions
of the same audio; the join crossfades from the first to the second over the whole overlap.

How loud a crossfade is midway depends on how alike the two sides are: equal-power gains keep
uncorrelated audio level but add 3 dB to identical audio, equal-gain ones do the reverse. The
gains here keep the power constant for the correlation the two sides actually have (measured),
so the join is level in both cases and in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    """One generation: ``prompt`` frames of audio given (0 for the first), ``new`` frames asked for."""

    prompt: int
    new: int


def plan_windows(total: int, window: int, overlap: int) -> list[Window]:
    """Windows (in codec frames) that make ``total`` frames when each holds at most ``window``
    frames and each after the first continues from the last ``overlap`` of the one before."""
    if total < 1 or window < 1:
        raise ValueError(f"need at least one frame and a window of one: total={total}, window={window}")
    if not 0 < overlap < window:
        raise ValueError(f"the overlap ({overlap} frames) must be shorter than the window ({window} frames)")
    windows = [Window(0, min(total, window))]
    made = windows[0].new
    while made < total:
        windows.append(Window(overlap, min(total - made, window - overlap)))
        made += windows[-1].new
    return windows


def crossfade_gains(length: int, correlation: float) -> tuple[Any, Any]:
    """(fade-out, fade-in) gains over ``length`` samples that keep the power of the mix constant
    for two signals of that correlation (clipped to [0, 1]: 0 gives equal-power, 1 equal-gain)."""
    import numpy as np

    r = min(1.0, max(0.0, float(correlation)))
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    out, into = np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
    norm = np.sqrt(1.0 + 2.0 * r * out * into)  # power of out*x + into*y, with x, y of unit power
    return out / norm, into / norm


def join(track: Any, chunk: Any, overlap: int) -> tuple[Any, float]:
    """``track`` continued by ``chunk`` (both ``(channels, samples)``), whose first ``overlap``
    samples cover the track's last ones: crossfaded there. Also the two sides' correlation."""
    import numpy as np

    if overlap > min(track.shape[-1], chunk.shape[-1]):
        raise ValueError(f"overlap of {overlap} samples is longer than the audio it joins")
    old, new = track[:, -overlap:].astype(np.float64), chunk[:, :overlap].astype(np.float64)
    denom = np.sqrt((old**2).sum() * (new**2).sum())
    correlation = float((old * new).sum() / denom) if denom > 0 else 0.0
    fade_out, fade_in = crossfade_gains(overlap, correlation)
    mixed = (old * fade_out + new * fade_in).astype(track.dtype)
    return np.concatenate([track[:, :-overlap], mixed, chunk[:, overlap:]], axis=-1), correlation
