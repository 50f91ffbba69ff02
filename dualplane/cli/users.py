"""The account commands: `dualplane users add|list|disable|enable|reset-password`, which work on
Redis directly (``REDIS_URL``, ``DUALPLANE_KEY_PREFIX``: whoever can reach the plane's Redis
administers its accounts), and `dualplane login`, which signs in over HTTP (``DUALPLANE_URL``)
and prints an access token, so `export DUALPLANE_TOKEN=$(dualplane login alice)` works.

Passwords are asked for on the terminal (twice when set), or read from the first line of
stdin with ``--password-stdin`` (scripts); never taken as an argument, which ``ps`` would show.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

import httpx

from dualplane.common.settings import Settings
from dualplane.devstack.local_stack import client_settings

#: The roles (auth.ROLES, spelled here: importing the control plane would slow every command).
ROLES = ("user", "admin", "orchestrator")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `users ...` and `login` on the `dualplane` parser's subcommands."""
    users = sub.add_parser("users", help="manage accounts (in Redis: REDIS_URL): add, list, disable, enable, "
                                         "reset-password")
    commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="create an account (role orchestrator: a service account)")
    add.add_argument("name")
    add.add_argument("--role", default="user", choices=ROLES)
    _password_option(add)
    add.set_defaults(handler=partial(_run, _add))
    commands.add_parser("list", help="every account: role, status, times").set_defaults(handler=partial(_run, _list))
    disable = commands.add_parser("disable", help="refuse the account's logins and revoke its tokens")
    disable.add_argument("name")
    disable.set_defaults(handler=partial(_run, partial(_set_disabled, disabled=True)))
    enable = commands.add_parser("enable", help="allow a disabled account to sign in again")
    enable.add_argument("name")
    enable.set_defaults(handler=partial(_run, partial(_set_disabled, disabled=False)))
    reset = commands.add_parser("reset-password", help="set a new password and revoke the account's tokens")
    reset.add_argument("name")
    _password_option(reset)
    reset.set_defaults(handler=partial(_run, _reset_password))

    login = sub.add_parser("login", help="sign in with a name and password (DUALPLANE_URL); print an access token")
    login.add_argument("name")
    _password_option(login)
    login.add_argument("--json", action="store_true", help="print the whole answer (with the refresh token)")
    login.set_defaults(handler=cmd_login)


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")


# -- users (Redis) ---------------------------------------------------------------------------


async def _add(store: Any, args: argparse.Namespace, settings: Settings) -> str:
    account = await store.add(args.name, _new_password(args), args.role)
    return f"added {account.name} ({account.role})"


async def _list(store: Any, args: argparse.Namespace, settings: Settings) -> str:
    rows = [("NAME", "ROLE", "STATUS", "CREATED", "UPDATED")] + [
        (a.name, a.role, "disabled" if a.disabled else "active", _time(a.created_at), _time(a.updated_at))
        for a in await store.list()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def _set_disabled(store: Any, args: argparse.Namespace, settings: Settings, *, disabled: bool) -> str:
    account = await store.set_disabled(args.name, disabled)
    if disabled:
        return f"disabled {account.name}: its tokens stop working within {settings.revocation_check_s:g} s"
    return f"enabled {account.name}: it can sign in again (its earlier tokens stay revoked)"


async def _reset_password(store: Any, args: argparse.Namespace, settings: Settings) -> str:
    account = await store.reset_password(args.name, _new_password(args))
    return f"new password for {account.name}: its tokens stop working within {settings.revocation_check_s:g} s"


def _run(command: Callable[..., Awaitable[str]], args: argparse.Namespace) -> int:
    """Run an account command on the plane's Redis; its errors are a message and exit 1."""
    from dualplane.common.bridge import Bridge
    from dualplane.common.errors import BridgeError
    from dualplane.control_plane.accounts import AccountStore

    settings = client_settings(Settings())

    async def run() -> str:
        async with Bridge(settings.bridge_config()) as bridge:
            store = AccountStore(bridge, refresh_ttl_s=settings.refresh_token_ttl_s)
            return await command(store, args, settings)

    try:
        print(asyncio.run(run()), flush=True)
    except ValueError as exc:  # an AccountError, REDIS_URL unset, passwords that differ
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BridgeError as exc:
        print(f"error: cannot use Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return _stdin_password()
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def _stdin_password() -> str:
    return sys.stdin.readline().rstrip("\r\n")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


# -- login (HTTP) ----------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    """Print the access token (or the whole answer with --json) and nothing else."""
    settings = client_settings(Settings())
    try:
        password = _stdin_password() if args.password_stdin else getpass.getpass("password: ")
        response = httpx.post(f"{settings.api_url.rstrip('/')}/auth/login", timeout=30,
                              json={"username": args.name, "password": password})
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except httpx.TransportError as exc:
        print(f"error: cannot reach the control plane at {settings.api_url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"error: {response.status_code} {_detail(response)}", file=sys.stderr)
        return 1
    body = response.json()
    print(json.dumps(body, indent=2) if args.json else body["access_token"], flush=True)
    return 0


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail") or response.reason_phrase)
    except (ValueError, AttributeError):
        return response.reason_phrase
