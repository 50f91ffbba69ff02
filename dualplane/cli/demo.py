"""The job `dualplane up` / `dualplane demo` runs: the one place to change the demo.

It is planned, not hand-written: the intent below goes through ``/compose`` like any user's, so
the demo shows the planner's brief and notes too. On embedded defaults the plan is the real
media path: ``plan_song`` writes the song (lyrics, key, chords), ``arrange_music`` composes and
renders it with FluidSynth, the packaged Piper voice speaks the intro and the lyrics,
``mix_audio`` ducks the music under them at -14 LUFS, ``visualize_audio`` draws a 720p lyric
video from the mix, and ``mux_media`` puts it all in one MP4 with WebVTT subtitles.
"""

from __future__ import annotations

DEMO_TEXT = "a 30-second lo-fi song about a rainy night, with a spoken intro and a lyric video"
#: Seconds the demo's track lasts (what the intent asks for).
DEMO_DURATION_S = 30.0
