"""The `dualplane` commands that talk to a running control plane: submit, compose, jobs,
cancel, and `token` (mints a JWT locally from the configured key).

The server is ``DUALPLANE_URL``, the credentials ``DUALPLANE_TOKEN`` (both through
:class:`Settings`); where they are unset, those of the local stack running in this directory
or one above (:func:`dualplane.devstack.local_stack.client_settings`: its URL, a token of its user
``demo``, its signing key for `token`). ``--watch`` follows the job over the WebSocket hub: one live progress bar
per node on a terminal, one plain line per event when stdout is a pipe or a file (logs, CI).
Exit codes: 0 when the job succeeded (or the command did what it was asked), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import httpx

from dualplane.cli.inputs import InputError, bind_uploads, intent_with_inputs, placeholders
from dualplane.cli.output import EXIT_INTERRUPTED, format_event, progress_bar, say
from dualplane.client import JOB_TERMINAL, ApiError, Client
from dualplane.common.settings import Settings
from dualplane.common.statuses import TERMINAL as NODE_TERMINAL

#: Seconds between two redraws of the live view (events can come much faster).
REDRAW_S = 0.05
JOBS_LIMIT = 20
#: How a dead-lettered job's error begins (bridge.dead_letter).
DEAD_LETTERED = "dead-lettered: "


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client commands on the `dualplane` parser's subcommands."""
    submit = sub.add_parser("submit", help="submit a graph document (JSON file, - for stdin)")
    submit.add_argument("graph", help="path of the graph JSON, or - to read stdin")
    submit.add_argument(
        "--idempotency-key", help="resubmitting with the same key returns the same job"
    )
    submit.add_argument("--upload", action="append", default=[], metavar="NAME=PATH",
                        help="upload PATH first and put its key wherever a param of the graph is \"@NAME\"")
    _add_consent_option(submit)
    _add_follow_options(submit)
    submit.set_defaults(handler=partial(run, cmd_submit))

    compose = sub.add_parser("compose", help="plan a job from a sentence and submit it")
    compose.add_argument("intent", help='what you want, e.g. "lo-fi track with rain"')
    compose.add_argument("--dry-run", action="store_true", help="print the plan (brief, notes, graph) only")
    compose.add_argument("--strict", action="store_true",
                         help="refuse a plan that substitutes a part or cannot make one")
    compose.add_argument("--input", action="append", default=[], metavar="FILE",
                         help="upload FILE as an input: audio as voice clips, images as images, a .txt as the "
                              "lyrics (repeat for more)")
    compose.add_argument("--name", help="what to call the job (default: from the intent)")
    _add_consent_option(compose)
    _add_follow_options(compose)
    compose.set_defaults(handler=partial(run, cmd_compose))

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", help="only jobs with this status")
    jobs.add_argument("--task", help="only jobs with a node of this task")
    jobs.add_argument("--limit", type=int, default=JOBS_LIMIT, help=f"rows (default {JOBS_LIMIT})")
    jobs.set_defaults(handler=partial(run, cmd_jobs))

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(handler=partial(run, cmd_cancel))

    token = sub.add_parser("token", help="mint an API token (needs the JWT signing key)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", default="user", choices=("user", "admin", "orchestrator"))
    token.add_argument(
        "--ttl-s", type=int, default=None, help="lifetime (default DUALPLANE_TOKEN_TTL_S)"
    )
    token.set_defaults(handler=partial(run, cmd_token))


def _add_consent_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consent", action="store_true",
                        help="the voices recorded in the uploaded audio consent to being cloned")


def _add_follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="follow the job live until it ends")
    parser.add_argument(
        "--wait", type=float, metavar="S", help="let the server wait up to S seconds"
    )


# -- commands --------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.graph == "-" else Path(args.graph).read_text()
    graph = json.loads(text)
    with _client() as client:
        if args.upload or placeholders(graph):
            graph = bind_uploads(client, graph, args.upload, consent=args.consent)
        job = client.submit(graph, wait_s=args.wait, idempotency_key=args.idempotency_key)
        return _follow(client, job, watch=args.watch, waited=args.wait is not None)


def cmd_compose(args: argparse.Namespace) -> int:
    with _client() as client:
        intent = intent_with_inputs(client, args.intent, args.input, consent=args.consent) if args.input \
            else args.intent
        if args.dry_run:
            plan = client.compose(intent, dry_run=True, strict=args.strict, name=args.name)
            for note in plan.get("notes", []):
                say(f"note: {note['kind']}{' (' + note['part'] + ')' if note.get('part') else ''}: {note['message']}")
            say(json.dumps({"brief": plan["brief"], "graph": plan["graph"]}, indent=2))
            return 0
        job = client.compose(intent, wait_s=args.wait, strict=args.strict, name=args.name)
        return _follow(client, job, watch=args.watch, waited=args.wait is not None)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client() as client:
        filters = {"status": args.status, "task": args.task, "limit": min(args.limit, 100)}
        rows = [summary for _, summary in zip(range(args.limit), client.iter_jobs(**filters), strict=False)]
        failed = [client.get_job(row["id"]) for row in rows if row["status"] in ("failed", "partial")]
    say(format_table(rows))
    for job in failed:  # why, without a second command
        say(f"{job['id']} {job['status']}:")
        for line in why_lines(job):
            say(f"  {line}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        answer = client.cancel(args.job_id)
    say(f"job {answer['id']} {answer['status']}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token and nothing else, so `export DUALPLANE_TOKEN=$(dualplane token ...)` works."""
    from dualplane.control_plane.auth import Authenticator

    try:
        token = Authenticator.from_settings(resolved_settings().auth).mint(args.user, args.role, ttl_s=args.ttl_s)
    except (ValueError, OSError) as exc:
        raise _Fail(f"cannot mint a token: {exc}") from None
    print(token, flush=True)
    return 0


# -- plumbing --------------------------------------------------------------------------------


class _Fail(Exception):
    """A message for stderr and exit code 1."""


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a client command, turning API / network / input errors into a message and exit 1."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (_Fail, ApiError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except httpx.TransportError as exc:
        print(
            f"error: cannot reach the control plane at {resolved_settings().api_url}: {exc}", file=sys.stderr
        )
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def resolved_settings() -> Settings:
    """The environment's settings, completed from the local stack running here."""
    from dualplane.devstack.local_stack import client_settings

    return client_settings(Settings())


@contextmanager
def _client() -> Iterator[Client]:
    resolved = resolved_settings()
    if not resolved.token:
        raise _Fail(
            "no API token: set DUALPLANE_TOKEN "
            "(e.g. export DUALPLANE_TOKEN=$(dualplane token --user alice)), or start a local stack here "
            "with `dualplane up`"
        )
    with Client.from_settings(resolved.client) as client:
        yield client


def _follow(client: Client, job: dict[str, Any], *, watch: bool, waited: bool) -> int:
    """After a submission: watch it, report the waited-for outcome, or just name the job."""
    if watch:
        say(f"submitted job {job['id']}")
        if job["status"] not in JOB_TERMINAL:
            LiveView(sys.stdout, tty=sys.stdout.isatty(), started=job.get("created_at")).run(
                client.watch(job["id"])
            )
        job = client.get_job(job["id"])
    elif not waited:
        say(f"job {job['id']} {job['status']}")
        return 0
    elif job["status"] not in JOB_TERMINAL:
        say(f"job {job['id']} still {job['status']} after the wait")
        return 1
    print_outcome(client, job)
    return 0 if job["status"] == "succeeded" else 1


def print_outcome(client: Client, job: dict[str, Any]) -> None:
    """Final status with what failed, each node's status (with its error or reason), why the
    job did not succeed, and the artifacts' URLs."""
    say(f"job {job['id']} {job['status']}" + (f": {headline}" if (headline := _headline(job)) else ""))
    for node in job["graph"]["nodes"]:
        error, reason = node.get("error"), node.get("reason")
        detail = f"  {error['type']}: {error['message']}" if error else (f"  {reason}" if reason else "")
        say(f"  {node['id']:<12} {node['status']:<10}{detail}".rstrip())
    for line in why_lines(job) if job["status"] != "succeeded" else []:
        say(f"why: {line}")
    try:
        artifacts = client.artifacts(job["id"])
    except ApiError as exc:
        say(f"artifacts: unavailable ({exc.status} {exc.title})")
        return
    if artifacts:
        say("artifacts:")
    for artifact in artifacts:
        say(f"  {artifact['node_id']}/{artifact['name']}  {artifact.get('url') or artifact['key']}")


def why_lines(job: dict[str, Any]) -> list[str]:
    """Why a job did not succeed: whether it was dead-lettered (or failed for a reason of its
    own), then each failed node with its error type, message and reason, and each node skipped or
    cancelled with its reason."""
    lines = []
    error = job.get("error") or ""
    if error.startswith(DEAD_LETTERED):
        lines.append(f"the job was dead-lettered: {error.removeprefix(DEAD_LETTERED)} (its message could not be "
                     "processed and was parked; an admin can replay it)")
    elif error:
        lines.append(error)
    for node in job["graph"]["nodes"]:
        failure, reason = node.get("error"), node.get("reason")
        if node["status"] == "failed":
            what = f"{failure['type']}: {failure['message']}" if failure else "no error was recorded"
            transient = " (transient; retries ran out)" if failure and failure.get("transient") else ""
            lines.append(f"node {node['id']} ({node['task']}) failed: {what}{transient}"
                         + (f"; {reason}" if reason else ""))
        elif node["status"] in ("skipped", "cancelled") and reason:
            lines.append(f"node {node['id']} ({node['task']}) {node['status']}: {reason}")
    return lines


def _headline(job: dict[str, Any]) -> str:
    """What the job header says after the status: which node failed, or the job's own error."""
    failed = [node["id"] for node in job["graph"]["nodes"] if node["status"] == "failed"]
    if job.get("error"):
        return job["error"]
    if failed:
        return f"node {failed[0]} failed" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
    return ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """Job summaries as aligned columns."""
    header = ("ID", "NAME", "STATUS", "PROGRESS", "CREATED", "USER", "TASKS")
    lines = [header] + [(
        row["id"], _cut(row.get("name") or "-", 40), row["status"], f"{(row.get('progress') or 0) * 100:.0f}%",
        _local_time(row.get("created_at")), row.get("user") or "-",
        _cut(",".join(row.get("tasks") or []), 40),
    ) for row in rows]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _local_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# -- the live view ---------------------------------------------------------------------------


class LiveView:
    """Renders a job's hub messages.

    :param out: where to write.
    :param tty: redraw a block of progress bars in place (ANSI) instead of one line per event.
    :param started: job creation time, for the plain lines' relative timestamps.
    """

    def __init__(self, out: TextIO, *, tty: bool, started: float | None = None) -> None:
        self.out, self.tty = out, tty
        self.started = started or time.time()
        self.job_status = "pending"
        self.nodes: dict[str, dict[str, Any]] = {}  # id -> {"status", "progress"}, graph order
        self._drawn_lines = 0
        self._last_draw = 0.0
        self._dirty = False

    def run(self, messages: Iterator[dict[str, Any]]) -> None:
        for message in messages:
            self.apply(message)
            if self.tty:
                self.draw()
        if self.tty and self._dirty:
            self.draw(force=True)  # the last state, whatever the throttle skipped

    def apply(self, message: dict[str, Any]) -> None:
        """Update the state; in plain mode, print the line for this message."""
        self._dirty = True
        if message["type"] == "snapshot":
            job = message["job"]
            self.job_status = job["status"]
            for node in job["graph"]["nodes"]:
                progress = node.get("progress") or 0.0
                self.nodes[node["id"]] = {"status": node["status"], "progress": progress}
            return
        event = message["event"]
        if not self.tty:
            self._write(format_event(event, self.started) + "\n")
        if event["type"] != "status" and event["type"] != "progress":
            return
        if not event.get("node_id"):
            self.job_status = event.get("status") or self.job_status
            return
        node = self.nodes.setdefault(event["node_id"], {"status": "", "progress": 0.0})
        if event["type"] == "progress":
            node["progress"] = event.get("progress") or 0.0
        else:
            node["status"] = event.get("status") or node["status"]
            if node["status"] == "succeeded":
                node["progress"] = 1.0

    def lines(self) -> list[str]:
        nodes = self.nodes.values()
        done = [1.0 if n["status"] in NODE_TERMINAL else n["progress"] for n in nodes]
        overall = sum(done) / len(done) if done else 0.0
        width = max((len(node_id) for node_id in self.nodes), default=4)
        return [f"job {self.job_status:<10} {progress_bar(overall)}"] + [
            f"  {node_id:<{width}}  {state['status']:<10} {progress_bar(state['progress'])}"
            for node_id, state in self.nodes.items()
        ]

    def draw(self, *, force: bool = False) -> None:
        """Redraw the block in place: cursor up over the last drawing, clear, print again."""
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_S:
            return
        lines = self.lines()
        up = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
        self._write(up + "\n".join(lines) + "\n")
        self._drawn_lines, self._last_draw, self._dirty = len(lines), now, False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
