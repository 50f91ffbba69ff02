"""The `dualplane` command: run a control plane, a worker, or the whole stack on one machine.

`up` and `demo` need nothing configured: they start a local Redis and SeaweedFS S3 when
REDIS_URL / S3_ENDPOINT are unset (see :mod:`dualplane.devstack.stack`), submit the demo graph
(:mod:`dualplane.cli.demo`) over HTTP and print its events as they happen.
"""

from __future__ import annotations

import argparse

from dualplane.cli import admin, client, library, users
from dualplane.cli.local import DEMO_TIMEOUT_S, DOWN_TIMEOUT_S, cmd_demo, cmd_down, cmd_status, cmd_up
from dualplane.cli.planes import cmd_control_plane, cmd_models, cmd_reconcile, cmd_worker


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
    worker = sub.add_parser("worker", help="run a data-plane worker, or several under one supervisor")
    worker.add_argument("--processes", type=_processes, metavar="N|auto",
                        help="worker processes, each with its own id (-<index>) and port (+index): 1 runs the "
                             "worker in this process; auto (or 0): one per NVIDIA GPU, else one per CPU core "
                             "(default DUALPLANE_WORKER_PROCESSES, 1)")
    worker.set_defaults(handler=cmd_worker)
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
    client.add_commands(sub)  # submit, compose, jobs, cancel, token
    library.add_commands(sub)  # uploads ls|rm, rename, rerun
    admin.add_commands(sub)  # dead-letters ls|show|replay|rm
    users.add_commands(sub)  # users add|list|disable|enable|reset-password, login
    return parser


def _processes(text: str) -> int:
    if text == "auto":
        return 0
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError("a count of processes is 0 (auto) or more")
    return count
