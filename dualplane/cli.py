"""The `dualplane` command: run a control plane, a worker, or the whole stack on one machine.

`up` and `demo` need nothing configured: they start a local Redis and SeaweedFS S3 when
REDIS_URL / S3_ENDPOINT are unset (see :mod:`dualplane.stack`), submit the demo graph
(:mod:`dualplane.demo`) over HTTP and print its events as they happen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx

from dualplane.common.settings import Settings

POLL_S = 0.1
BAR_WIDTH = 10
DEMO_TIMEOUT_S = 120.0
#: `dualplane down` waits this long: the launcher gives the worker and the control plane their
#: 30 s shutdown grace (plus a margin) each, then stops the servers
DOWN_TIMEOUT_S = 120.0
JOB_TERMINAL = frozenset({"succeeded", "failed", "partial", "cancelled"})
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m dualplane`."""
    args = _parser().parse_args(argv)
    return int(args.handler(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualplane", description="Control plane / data plane job orchestration."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = sub.add_parser("models", help="model tools: `models make-tiny` builds the tiny models and uploads "
                                           "them; `models pull NAME --from-dir DIR | --from-hub ID` uploads real weights")
    models.add_argument("rest", nargs=argparse.REMAINDER)
    models.set_defaults(handler=cmd_models)
    sub.add_parser("control-plane", help="run the control plane HTTP API (uvicorn)").set_defaults(
        handler=cmd_control_plane
    )
    sub.add_parser("worker", help="run one data-plane worker").set_defaults(handler=cmd_worker)
    reconcile = sub.add_parser(
        "reconcile", help="find unfinished jobs whose stream message was lost and hand them on again (REDIS_URL)")
    reconcile.add_argument("--dry-run", action="store_true", help="only report them")
    reconcile.set_defaults(handler=cmd_reconcile)
    up = sub.add_parser("up", help="start the local stack (state kept in .dualplane/), run the demo job with "
                                   "live progress, keep serving until Ctrl-C, SIGTERM or a closed terminal")
    up.add_argument("--no-demo", action="store_true", help="only start the stack and serve")
    up.set_defaults(handler=cmd_up)
    sub.add_parser("status", help="is a local stack running here: its URL, pids, ports, data size, jobs"
                   ).set_defaults(handler=cmd_status)
    down = sub.add_parser("down", help="stop the local stack running here (from any terminal)")
    down.add_argument("--timeout", type=float, default=DOWN_TIMEOUT_S,
                      help=f"seconds before its processes get SIGKILL (default {DOWN_TIMEOUT_S:g})")
    down.set_defaults(handler=cmd_down)
    demo = sub.add_parser("demo", help="like `up`, but exit after the job: 0 if it succeeded")
    demo.add_argument(
        "--timeout",
        type=float,
        default=DEMO_TIMEOUT_S,
        help=f"seconds to wait for the job (default {DEMO_TIMEOUT_S:g})",
    )
    demo.set_defaults(handler=cmd_demo)
    from dualplane.cli_client import add_commands  # submit, compose, jobs, cancel, token

    add_commands(sub)
    from dualplane import cli_library  # uploads ls|rm, rename, rerun

    cli_library.add_commands(sub)
    from dualplane import cli_admin  # dead-letters ls|show|replay|rm

    cli_admin.add_commands(sub)
    from dualplane import cli_users  # users add|list|disable|enable|reset-password, login

    cli_users.add_commands(sub)
    return parser


def configure_logging(level: str) -> None:
    """JSON lines with the bound ids (job, node, request, plane, worker); text on a terminal."""
    from dualplane.common import logs

    logs.configure(level)


# -- the two planes -------------------------------------------------------------------------


def cmd_control_plane(args: argparse.Namespace) -> int:
    """Serve the control plane; uvicorn turns SIGTERM/SIGINT into a graceful lifespan stop."""
    import uvicorn

    from dualplane.control_plane.app import create_app
    from dualplane.control_plane.policy import PolicyError

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except PolicyError as exc:  # a content policy that cannot be used: say what is wrong, do not serve
        logging.getLogger("dualplane.control").critical("%s", exc)
        return 2
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.control_host, port=settings.control_port,
        ws="websockets-sansio", ws_per_message_deflate=False, timeout_graceful_shutdown=10,
        log_level=settings.log_level.lower(), forwarded_allow_ips=settings.forwarded_allow_ips,
    ))  # fmt: skip
    control = app.state.control

    async def serve() -> None:
        async def exit_when_failed() -> None:
            await control.failed.wait()
            server.should_exit = True  # a supervisor starts a fresh process

        watch = asyncio.create_task(exit_when_failed())
        try:
            await server.serve()
        finally:
            watch.cancel()

    run_async(serve())
    return 1 if control.failed.is_set() else 0


def cmd_models(args: argparse.Namespace) -> int:
    """`dualplane models make-tiny ...` (torch needed) and `dualplane models pull NAME ...`."""
    from dualplane.data_plane.models_cli import main_models
    from dualplane.local_stack import client_settings

    return int(main_models(args.rest, client_settings(Settings())) or 0)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker until SIGTERM/SIGINT (the worker installs its own handlers)."""
    from dualplane.common.errors import PlaneFailed
    from dualplane.data_plane.worker import Worker

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        run_async(Worker(settings).run())
    except PlaneFailed as exc:
        logging.getLogger("dualplane.worker").critical("%s; exiting so that a supervisor restarts it", exc)
        return 1
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One reconciler pass (the control plane runs one every DUALPLANE_RECONCILE_INTERVAL_S)."""
    from dualplane.common.bridge import Bridge
    from dualplane.control_plane.reconciler import Reconciler
    from dualplane.local_stack import client_settings

    settings = client_settings(Settings())
    configure_logging(settings.log_level)

    async def once() -> Any:
        async with Bridge(settings.bridge_config()) as bridge:
            reconciler = Reconciler(bridge, interval_s=0, marker_expected=True)
            return await reconciler.run_once(repair=not args.dry_run)

    report = asyncio.run(once())
    verb = "would hand on" if args.dry_run else "handed on"
    print(f"{report.scanned} unfinished jobs checked; {verb} {len(report.requeued)} whose message was lost"
          + (": " + ", ".join(report.requeued) if report.requeued else ""))
    if report.lost_data:
        print("Redis had lost its data (instance marker missing): jobs it held are gone")
    return 0


def run_async(coroutine: Any) -> Any:
    """Run on uvloop where it is installed (a third less loop overhead on the dispatch
    path), on the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- up / demo -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    return run_stack(serve=True, timeout_s=None, demo=not args.no_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_stack(serve=False, timeout_s=args.timeout)


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


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    """SIGTERM (`dualplane down`) and SIGHUP (a closed terminal) take the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def run_stack(*, serve: bool, timeout_s: float | None, demo: bool = True) -> int:
    """Start the local stack, run the demo job (unless not `demo`), optionally keep serving;
    always stop it all."""
    from dualplane.stack import LocalStack, kill_leftover_children, signals_ignored

    settings = Settings()
    configure_logging(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    # the tiny-model build says what it did in one announced line
    for name in ("dualplane.data_plane.tiny", "dualplane.data_plane.model_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    stack = LocalStack(settings, Path.cwd(), announce=say)
    try:
        stack.start()
        succeeded = run_demo_job(stack, settings, timeout_s) if demo else True
        return serve_until_interrupted(stack) if serve else (0 if succeeded else 1)
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        with signals_ignored():
            say("stopping: worker, control plane, object store, redis ...")
            stack.stop()
            kill_leftover_children()
            say("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_status(args: argparse.Namespace) -> int:
    """What runs here (0), or that nothing does (1)."""
    from dualplane.local_stack import abandoned, discover

    stack = discover()
    if stack is None:
        say(f"no local stack is running in {Path.cwd()} (start one with `dualplane up`)")
        if (left := abandoned()) is not None:
            say(f"but processes of one whose launcher was killed still run: "
                f"{', '.join(f'{n} (pid {p.pid})' for n, p in left.processes.items() if p.alive())}; "
                "`dualplane down` or the next `dualplane up` stops them")
        return 1
    for line in describe_stack(stack, Settings()):
        say(line)
    return 0


def describe_stack(stack: Any, settings: Settings) -> list[str]:
    """The status lines of a running local stack (a :class:`~dualplane.local_stack.RunningStack`)."""
    from dualplane.common.bridge import Keys
    from dualplane.local_stack import StateDir

    uptime = time.time() - stack.started_at
    lines = [f"local stack running at {stack.url} (launcher pid {stack.launcher.pid}, "
             + f"up {uptime // 3600:.0f} h {uptime % 3600 // 60:.0f} min)"]
    where = {"redis": stack.redis_url, "s3": f"http://{stack.s3_endpoint}", "control-plane": stack.url,
             "worker": f"http://127.0.0.1:{stack.ports.get('worker')}"}
    for name, process in stack.processes.items():
        state = "running" if process.alive() else "GONE"
        lines.append(f"  {name:<14} pid {process.pid:<8} {state:<8} {where.get(name, '')}".rstrip())
    ports = {name: (port["s3"] if isinstance(port, dict) else port) for name, port in stack.ports.items()}
    lines.append("  ports          " + ", ".join(f"{name} {port}" for name, port in sorted(ports.items())))
    size_mib = StateDir(stack.state_dir).size_bytes() / 2**20
    lines.append(f"  data           {stack.state_dir} ({size_mib:.1f} MiB)")
    lines.append(f"  jobs           {_job_count(stack.redis_url, Keys(settings.key_prefix))}")
    return lines


def _job_count(redis_url: str, keys: Any) -> str:
    import redis

    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
            total, unfinished = client.zcard(keys.jobs_index), client.zcard(keys.active_jobs)
    except redis.RedisError as exc:
        return f"unknown (Redis does not answer: {exc})"
    return f"{total} ({unfinished} unfinished)"


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the stack running here the way Ctrl-C in its terminal would; 0 once nothing runs."""
    from dualplane.local_stack import abandoned, discover, stop, stop_abandoned

    stack = discover()
    if stack is None:
        left = abandoned()
        stopped = stop_abandoned(left, args.timeout) if left is not None else []
        say(f"stopped what a killed launcher left running: {', '.join(stopped)}" if stopped
            else f"no local stack is running in {Path.cwd()}")
        return 0
    say(f"stopping the local stack at {stack.url} (launcher pid {stack.launcher.pid}) ...")
    if stop(stack, args.timeout):
        say("stopped")
    else:
        say(f"it did not stop within {args.timeout:g} s: its processes were killed (SIGKILL)")
    return 0


def serve_until_interrupted(stack: Any) -> int:
    """Keep the stack up for the person at the terminal; a child dying on its own is an error."""
    say(f"web UI: {stack.control_url}/  - sign in with this token (user 'demo', owner of the demo job):")
    say(f"  {stack.mint_token()}")
    say(
        f"serving: control plane at {stack.control_url} (API docs at {stack.control_url}/docs)"
        " - Ctrl-C to stop"
    )
    try:
        while True:
            stack.check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


# -- the demo job ----------------------------------------------------------------------------


def run_demo_job(stack: Any, settings: Settings, timeout_s: float | None) -> bool:
    """Plan the demo intent, show the plan, submit it, print its events live, then the outcome;
    True if it succeeded."""
    from dualplane.demo import DEMO_TEXT

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
