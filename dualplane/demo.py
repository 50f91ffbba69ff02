"""The graph `dualplane up` / `dualplane demo` submits: the one place to change the demo.

For now a cross-plane graph on the small CPU tasks (control -> python in parallel -> control),
so the demo exercises both handoffs, a fan-out, a join, progress events and an artifact
without any model weights. A later issue swaps in the music-video graph on tiny models.
"""

from __future__ import annotations

from typing import Any

DEMO_TEXT = "a 30-second lo-fi track with a rainy-night video"


def demo_graph() -> dict[str, Any]:
    """A fresh graph document (no id: every run is a new job)."""
    return {
        "intent": DEMO_TEXT,
        "nodes": [
            {"id": "seed", "task": "emit", "plane": "control",
             "params": {"value": {"text": DEMO_TEXT}}},
            {"id": "hash", "task": "checksum", "plane": "python", "needs": ["seed"],
             "params": {"text": {"$ref": "seed.output.text"}}},
            {"id": "wait", "task": "sleep", "plane": "python", "needs": ["seed"],
             "params": {"seconds": 1.5, "steps": 10}},
            {"id": "collect", "task": "collect", "plane": "control", "needs": ["hash", "wait"],
             "params": {"values": {"sha256": {"$ref": "hash.output.sha256"},
                                   "slept_s": {"$ref": "wait.output.slept_s"}}}},
        ],
    }  # fmt: skip
