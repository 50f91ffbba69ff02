"""The graph `dualplane up` / `dualplane demo` submits: the one place to change the demo.

The music-video graph: ``plan_song`` (control) plans title, lyrics and prompts from the
intent; ``generate_music`` (MusicGen) and ``render_video`` (AnimateDiff) run in parallel on
the worker; ``mux_media`` (control, ffmpeg) puts the track under the video. Without real
weights the stack serves tiny random-initialised models of the same classes, so the audio
and video are noise-like — the pipeline, loading path, progress and artifacts are real.
Sizes are kept small so the demo finishes in seconds on a laptop CPU.
"""

from __future__ import annotations

from typing import Any

DEMO_TEXT = "a 30-second lo-fi track with a rainy-night video"
#: Seconds of music the demo generates (the real intent says 30; CPU demo keeps it short).
DEMO_DURATION_S = 4.0


def demo_graph() -> dict[str, Any]:
    """A fresh graph document (no id: every run is a new job)."""
    return {
        "intent": DEMO_TEXT,
        "nodes": [
            {"id": "song", "task": "plan_song", "plane": "control",
             "params": {"narrative": DEMO_TEXT, "duration_s": DEMO_DURATION_S}},
            {"id": "music", "task": "generate_music", "plane": "python", "needs": ["song"],
             "params": {"prompt": {"$ref": "song.output.music_prompt"}, "duration_s": DEMO_DURATION_S,
                        "seed": 7}},
            {"id": "video", "task": "render_video", "plane": "python", "needs": ["song"],
             "params": {"prompt": {"$ref": "song.output.video_prompt"}, "num_frames": 16, "fps": 8,
                        "steps": 4, "seed": 7}},
            {"id": "final", "task": "mux_media", "plane": "control", "needs": ["music", "video"],
             "params": {"audio": {"$ref": "music.output.audio"}, "video": {"$ref": "video.output.video"}}},
        ],
    }  # fmt: skip
