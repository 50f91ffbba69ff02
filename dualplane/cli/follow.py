"""The demo job in a terminal: plan it, show the plan, submit it, print its events live, then the
outcome and the saved video (the job itself is :mod:`dualplane.cli.demo`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from dualplane.cli.output import format_event, say
from dualplane.common.settings import Settings
from dualplane.common.statuses import FINISHED as JOB_TERMINAL

POLL_S = 0.1


def run_demo_job(stack: Any, settings: Settings, timeout_s: float | None) -> bool:
    """Plan the demo intent, show the plan, submit it, print its events live, then the outcome;
    True if it succeeded."""
    from dualplane.cli.demo import DEMO_TEXT

    headers = {"Authorization": f"Bearer {stack.mint_token()}"}
    with httpx.Client(base_url=stack.control_url, timeout=30.0, headers=headers) as http:
        say(f"planning: {DEMO_TEXT!r}")
        plan = http.post("/compose", json={"intent": DEMO_TEXT, "dry_run": True}).raise_for_status().json()
        print_plan(plan)
        # the graph shown is the graph run (a second /compose could plan against other workers)
        response = http.post("/jobs", json=plan["graph"])
        response.raise_for_status()
        job_id = response.json()["id"]
        say(f"submitted job {job_id}")
        job = follow_job(http, stack, job_id, timeout_s)
    if job is None:
        say(f"job {job_id} did not finish within {timeout_s:g} s")
        return False
    print_outcome(job, stack, settings)
    if job["status"] == "succeeded":
        save_final(job, stack, settings)
    return job["status"] == "succeeded"


def save_final(job: dict[str, Any], stack: Any, settings: Settings) -> None:
    """The finished video (and its poster and subtitles) as local files a person can open."""
    from dualplane.common.artifacts import ArtifactStore

    final = next((n for n in job["graph"]["nodes"] if n["task"] == "mux_media"), None)
    if final is None or not final.get("output"):
        return
    out_dir = Path(stack.state_dir) / "demo-output"
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {"video": "final.mp4", "poster": "poster.png", "subtitles": "lyrics.vtt"}

    async def fetch() -> list[Path]:
        store = ArtifactStore(endpoint=stack.s3_endpoint, access_key=stack.s3_access_key or "",
                              secret_key=stack.s3_secret_key or "", bucket=settings.s3_bucket,
                              secure=settings.s3_secure)
        written = []
        for field, name in wanted.items():
            key = final["output"].get(field)
            if key:
                path = out_dir / name
                path.write_bytes(await store.get(key))
                written.append(path)
        return written

    for path in asyncio.run(fetch()):
        say(f"saved {path}")


def print_plan(plan: dict[str, Any]) -> None:
    """The planner's view: its nodes, every note, and the song it will write."""
    say("plan: " + ", ".join(f"{n['id']} ({n['task']})" for n in plan["graph"]["nodes"]))
    for note in plan.get("notes", []):
        say(f"  note {note['kind']}{' (' + note['part'] + ')' if note.get('part') else ''}: {note['message']}")
    song = plan.get("song")
    if song:
        say(f"  song: {song['title']!r}, {song['genre']}, {song['key']}, {song['bpm']} bpm, "
            f"chords {' '.join(song['chords'])}")
        for line in song.get("lyrics_text", "").splitlines():
            say(f"    {line}")


def follow_job(
    http: httpx.Client, stack: Any, job_id: str, timeout_s: float | None
) -> dict[str, Any] | None:
    """Print every event (polling `since=<last seq>`) until the job is terminal; None on timeout.

    The events stream is the durable record, so polling with `since` never misses or repeats one.
    """
    started, deadline = time.time(), None if timeout_s is None else time.monotonic() + timeout_s
    seq = 0
    while deadline is None or time.monotonic() < deadline:
        events = http.get(f"/jobs/{job_id}/events", params={"since": seq}).raise_for_status().json()
        for event in events:
            say(format_event(event, started))
            seq = event["seq"]
        if any(e["type"] == "status" and not e.get("node_id") for e in events):
            job = http.get(f"/jobs/{job_id}").raise_for_status().json()
            if job["status"] in JOB_TERMINAL:
                return job
        stack.check_children()
        time.sleep(POLL_S)
    return None


def print_outcome(job: dict[str, Any], stack: Any, settings: Settings) -> None:
    """Final status, each node's status, and a presigned GET URL per artifact."""
    say(f"job {job['id']} {job['status']}")
    for node in job["graph"]["nodes"]:
        error = (
            f"  {node['error']['type']}: {node['error']['message']}" if node.get("error") else ""
        )
        say(f"  {node['id']:<10} {node['status']:<10}{error}".rstrip())
    refs = [
        (node["id"], ref) for node in job["graph"]["nodes"] for ref in node.get("artifacts") or []
    ]
    if refs:
        say("artifacts (presigned GET URLs, valid 1 h):")
    for node_id, ref, url in zip_urls(refs, stack, settings):
        say(f"  {node_id}/{ref['name']}  {url}")


def zip_urls(
    refs: list[tuple[str, dict[str, Any]]], stack: Any, settings: Settings
) -> list[tuple[str, dict[str, Any], str]]:
    """Presign every artifact with the stack's S3 credentials (generated ones included)."""
    from dualplane.common.artifacts import ArtifactStore

    async def presign() -> list[str]:
        urls = []
        for _, ref in refs:
            store = ArtifactStore(
                endpoint=stack.s3_endpoint, access_key=stack.s3_access_key or "",
                secret_key=stack.s3_secret_key or "", bucket=ref["bucket"], secure=settings.s3_secure,
            )  # fmt: skip
            urls.append(await store.presigned_url(ref["key"]))
        return urls

    urls = asyncio.run(presign()) if refs else []
    return [(node_id, ref, url) for (node_id, ref), url in zip(refs, urls, strict=True)]
