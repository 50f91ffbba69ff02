"""The `dualplane` commands for what a user keeps: `uploads ls|rm`, `rename`, `rerun`.

Like the other client commands (:mod:`dualplane.cli.client`) they talk to the control plane at
``DUALPLANE_URL`` with ``DUALPLANE_TOKEN``, and exit 1 with the API's problem on stderr.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from functools import partial

from dualplane.cli.client import _client, _Fail, _follow, run
from dualplane.cli.output import say


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    uploads = sub.add_parser("uploads", help="your uploaded input files: ls, rm KEY")
    actions = uploads.add_subparsers(dest="uploads_command", required=True, metavar="ACTION")
    listing = actions.add_parser("ls", help="list your uploads, newest first")
    listing.add_argument("--kind", choices=("audio", "image", "text"), help="only this kind")
    listing.set_defaults(handler=partial(run, cmd_uploads_ls))
    remove = actions.add_parser("rm", help="delete an upload (its bytes and its record)")
    remove.add_argument("key", metavar="KEY", help="the upload's key, uploads/<you>/<sha256>/<name>")
    remove.set_defaults(handler=partial(run, cmd_uploads_rm))

    rename = sub.add_parser("rename", help="rename a job")
    rename.add_argument("job_id", metavar="ID")
    rename.add_argument("name", metavar="NAME")
    rename.set_defaults(handler=partial(run, cmd_rename))

    rerun = sub.add_parser("rerun", help="run a job's graph again as a new job")
    rerun.add_argument("job_id", metavar="ID")
    rerun.add_argument("--new-seed", action="store_true", help="a fresh seed for every node with a seed")
    rerun.add_argument("--watch", action="store_true", help="follow the new job live until it ends")
    rerun.set_defaults(handler=partial(run, cmd_rerun))


def cmd_uploads_ls(args: argparse.Namespace) -> int:
    with _client() as client:
        records = client.uploads(args.kind)
    if not records:
        say("no uploads")
    for record in records:
        facts = [f"{record['size']} B", record["content_type"]]
        if record.get("duration_s") is not None:
            facts.append(f"{record['duration_s']:g} s")
        if record.get("width") is not None:
            facts.append(f"{record['width']}x{record['height']}")
        if record.get("consent"):
            facts.append("consent")
        when = datetime.fromtimestamp(record["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        say(f"{record['key']}  {when}  {', '.join(facts)}")
    return 0


def cmd_uploads_rm(args: argparse.Namespace) -> int:
    with _client() as client:
        try:
            client.delete_upload(args.key)
        except ValueError as exc:
            raise _Fail(str(exc)) from None
    say(f"deleted {args.key}")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    with _client() as client:
        job = client.rename(args.job_id, args.name)
    say(f"job {job['id']} is now {job['name']!r}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    with _client() as client:
        job = client.rerun(args.job_id, seed="new" if args.new_seed else "same")
        say(f"re-run of {args.job_id} with {'new' if args.new_seed else 'the same'} seeds")
        return _follow(client, job, watch=args.watch, waited=False)
