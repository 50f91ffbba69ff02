"""What the CLI prints: live lines, progress bars, one line per job event."""

from __future__ import annotations

import json
import os
from typing import Any

BAR_WIDTH = 10
#: Exit code of a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def say(line: str) -> None:
    """Progress output: flushed at once so a pipe (tests, `tee`) sees it live."""
    try:
        print(line, flush=True)
    except OSError:  # the terminal was closed (EIO) or the pipe's reader left: stopping goes on
        _output_to_devnull()


def _output_to_devnull() -> None:
    """Point stdout and stderr at /dev/null: what is still buffered, and every later line (ours,
    logging's), goes nowhere instead of failing again, and the exit status stays ours."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def progress_bar(fraction: float) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%"


def format_event(event: dict[str, Any], started: float) -> str:
    """One terminal line per event: time since submit, seq, node (or `job`), what happened."""
    head = (
        f"[{max(0.0, event['ts'] - started):6.2f}s] seq {event['seq']:<3} "
        f"{event.get('node_id') or 'job':<10}"
    )
    message = f"  {event['message']}" if event.get("message") else ""
    if event["type"] == "progress":
        return f"{head} {progress_bar(event.get('progress') or 0.0)}{message}".rstrip()
    if event["type"] == "status":
        attempt = f"  attempt {event['attempt']}" if event.get("attempt") else ""
        return f"{head} {event.get('status') or '':<10}{attempt}{message}".rstrip()
    return f"{head} {event['type']:<10} {describe_data(event.get('data'))}{message}".rstrip()


def describe_data(data: dict[str, Any] | None) -> str:
    """An artifact as `name (size B)`, a preview frame and audio progress in words (never the
    base64); anything else as compact JSON, cut to fit one line."""
    artifact = (data or {}).get("artifact")
    if isinstance(artifact, dict) and "name" in artifact:
        return f"{artifact['name']} ({artifact.get('size', '?')} B)"
    preview = (data or {}).get("preview")
    if isinstance(preview, dict):
        b64 = str(preview.get("b64", ""))
        size = len(b64) * 3 // 4 - b64[-2:].count("=")  # the image's bytes, without decoding it
        return f"preview frame, step {preview.get('step', '?')}/{preview.get('of', '?')}, {size / 1024:.1f} KiB"
    audio = (data or {}).get("audio_progress")
    if isinstance(audio, dict) and all(isinstance(audio.get(k), int | float) for k in ("seconds", "of")):
        return f"{audio['seconds']:.1f} s of {audio['of']:g} s"
    text = json.dumps(data, separators=(",", ":"))
    return text[:80] + ("..." if len(text) > 80 else "")
