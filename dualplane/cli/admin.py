"""`dualplane dead-letters ls|show|replay|rm`: a running control plane's dead letters, with an
admin token (``DUALPLANE_URL``, ``DUALPLANE_TOKEN``, as the other client commands).

``ls`` prints newest first one line per dead letter (id, time, job, source stream, reason);
``show ID`` the dead letter with the message it parked, as JSON; ``replay ID`` puts the message
back on its stream and makes its job runnable again; ``rm ID`` discards it. Exit codes: 0 when
it did what it was asked, 1 otherwise (a 403 for a non-admin token, a 404 for an unknown id).
"""

from __future__ import annotations

import argparse
import json
from functools import partial

from dualplane.cli.client import _client, _cut, _local_time, run
from dualplane.cli.output import say

LS_LIMIT = 50


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dead-letters` on the `dualplane` parser's subcommands."""
    parser = sub.add_parser("dead-letters", help="list, show, replay or discard dead letters (admin token)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="dead letters, newest first: id, time, job, stream, reason")
    ls.add_argument("--limit", type=int, default=LS_LIMIT, help=f"rows (default {LS_LIMIT})")
    ls.set_defaults(handler=partial(run, cmd_ls))
    for name, handler, text in (("show", cmd_show, "one dead letter with its message (JSON)"),
                                ("replay", cmd_replay, "put its message back on its stream; its job runs again"),
                                ("rm", cmd_rm, "discard it (its job stays failed)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", metavar="ID")
        action.set_defaults(handler=partial(run, handler))


def cmd_ls(args: argparse.Namespace) -> int:
    with _client() as client:
        rows = client.dead_letters(limit=max(1, min(args.limit, 1000)))["dead_letters"]
    if not rows:
        say("no dead letters")
        return 0
    lines = [("ID", "TIME", "JOB", "STREAM", "REASON")] + [
        (row["id"], _local_time(row["ts"]), row["job"] or "-", row["stream"], _cut(row["reason"], 80))
        for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        say("  ".join(cell.ljust(w) for cell, w in zip(line[:4], widths, strict=True)) + "  " + line[4])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client() as client:
        say(json.dumps(client.dead_letter(args.id), indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    with _client() as client:
        done = client.replay_dead_letter(args.id)
    say(f"replayed {done['replayed']} onto {done['stream']} as {done['message_id']}"
        + (f"; job {done['job']} is queued again" if done.get("job") else ""))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _client() as client:
        client.discard_dead_letter(args.id)
    say(f"discarded {args.id}")
    return 0
