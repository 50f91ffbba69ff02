"""`dualplane up`, `demo`, `status` and `down`: the local stack (:mod:`dualplane.devstack`) from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx

from dualplane.cli.follow import run_demo_job
from dualplane.cli.output import EXIT_INTERRUPTED, say
from dualplane.cli.planes import configure_logging
from dualplane.common.settings import Settings

DEMO_TIMEOUT_S = 120.0
#: `dualplane down` waits this long: the launcher gives the worker and the control plane their
#: 30 s shutdown grace (plus a margin) each, then stops the servers
DOWN_TIMEOUT_S = 120.0


def cmd_up(args: argparse.Namespace) -> int:
    return run_stack(serve=True, timeout_s=None, demo=not args.no_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_stack(serve=False, timeout_s=args.timeout)


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    """SIGTERM (`dualplane down`) and SIGHUP (a closed terminal) take the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def run_stack(*, serve: bool, timeout_s: float | None, demo: bool = True) -> int:
    """Start the local stack, run the demo job (unless not `demo`), optionally keep serving;
    always stop it all."""
    from dualplane.devstack.stack import LocalStack, kill_leftover_children, signals_ignored

    settings = Settings()
    configure_logging(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    # the tiny-model build says what it did in one announced line
    for name in ("dualplane.ml.tiny", "dualplane.ml.model_store"):
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
    from dualplane.devstack.local_stack import abandoned, discover

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
    """The status lines of a running local stack (a :class:`~dualplane.devstack.local_stack.RunningStack`)."""
    from dualplane.devstack.local_stack import StateDir

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
    lines.append(f"  jobs           {_job_count(settings, stack.redis_url)}")
    return lines


def _job_count(settings: Settings, redis_url: str) -> str:
    from dualplane.common.bridge import Bridge
    from dualplane.common.errors import BridgeError

    async def count() -> tuple[int, int]:
        async with Bridge(settings.model_copy(update={"redis_url": redis_url}).bridge_config()) as bridge:
            return await bridge.job_counts()

    try:
        total, unfinished = asyncio.run(asyncio.wait_for(count(), 2))
    except (BridgeError, TimeoutError) as exc:
        return f"unknown (Redis does not answer: {exc or 'no answer within 2 s'})"
    return f"{total} ({unfinished} unfinished)"


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the stack running here the way Ctrl-C in its terminal would; 0 once nothing runs."""
    from dualplane.devstack.local_stack import abandoned, discover, stop, stop_abandoned

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
