"""What a local stack (`dualplane up`) keeps under `.dualplane/`, and how other commands find it.

Chosen on the first start and kept, so that a restart finds its jobs, artifacts and tokens where
it left them (the directory is 0700, the secret files 0600):

=======================  ====================================================================
``ports.json``           the ports of Redis, of every part of the object store, of the control
                         plane and of the worker (a kept port found taken is replaced, and said)
``jwt-secret``           the HS256 secret tokens are signed and verified with (secret)
``s3-credentials.json``  the object store's access and secret key (secret)
``stack.json``           while a stack runs: its URL, the launcher's pid, every child's pid,
                         where Redis and S3 are and the signing key's path
``stack.lock``           held (flock) by the running launcher: one stack per directory
=======================  ====================================================================

:func:`discover` is how every command that talks to "the local stack" finds it (the client
commands, `status`, `down`): a live ``stack.json`` here or in a directory above. Explicit
settings (``DUALPLANE_URL``, ``DUALPLANE_TOKEN``, ``DUALPLANE_JWT_SECRET``) win over it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualplane.common.settings import Settings

STATE_DIR = ".dualplane"
RECORD = "stack.json"
PORTS = "ports.json"
JWT_SECRET = "jwt-secret"
S3_CREDENTIALS = "s3-credentials.json"
LOCK = "stack.lock"
#: How long each process of a stack whose launcher had to be killed gets between SIGTERM and SIGKILL.
KILLED_LAUNCHER_GRACE_S = 5.0
#: The user whose token `dualplane up` prints, and whom the client commands act as on a
#: discovered stack when no DUALPLANE_TOKEN is set (the owner of the demo job).
LOCAL_USER = "demo"


class StackRunning(RuntimeError):
    """Another launcher holds this directory's stack."""


def process_started(pid: int) -> int | None:
    """The process's start time (clock ticks since boot) while it lives, else None (zombies too).

    A pid together with its start time names one process: a pid reused later has another.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Process:
    """A process the stack started; it leads its own process group (``pgid == pid``)."""

    pid: int
    started: int | None

    def alive(self) -> bool:
        return self.started is not None and process_started(self.pid) == self.started

    def stop(self, timeout_s: float, poll_s: float = 0.1) -> None:
        """SIGTERM to its process group, wait for it to go (it is not our child: poll), then
        SIGKILL whatever of the group is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            deadline = time.monotonic() + timeout_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(poll_s)


@dataclass(frozen=True)
class RunningStack:
    """The record a running `dualplane up` / `demo` keeps in ``stack.json``."""

    state_dir: Path
    url: str
    launcher: Process
    started_at: float
    redis_url: str
    s3_endpoint: str
    #: name (redis, s3, control-plane, worker) -> process; servers given by settings are absent
    processes: dict[str, Process] = field(default_factory=dict)
    ports: dict[str, Any] = field(default_factory=dict)
    #: the HS256 secret's file, None when the secret came from DUALPLANE_JWT_SECRET
    jwt_secret_file: str | None = None

    def alive(self) -> bool:
        return self.launcher.alive()

    def jwt_secret(self) -> str | None:
        return Path(self.jwt_secret_file).read_text().strip() if self.jwt_secret_file else None

    def mint_token(self, user: str = LOCAL_USER, role: str = "user", *, ttl_s: int | None = None) -> str:
        """A token the stack accepts, signed with its kept key (ValueError without one)."""
        from dualplane.control_plane.auth import Authenticator

        return Authenticator(algorithm="HS256", secret=self.jwt_secret()).mint(user, role, ttl_s=ttl_s)

    def to_json(self) -> str:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunningStack:
        data = json.loads(text)
        return cls(**{
            **data, "state_dir": Path(data["state_dir"]), "launcher": Process(**data["launcher"]),
            "processes": {name: Process(**p) for name, p in data["processes"].items()},
        })  # fmt: skip


def discover(start: Path | None = None) -> RunningStack | None:
    """The local stack running in `start` (default: the current directory) or a directory above
    it, or None. A record whose launcher is gone (killed with SIGKILL, a reboot) is ignored."""
    return next((stack for stack in _records(start) if stack.alive()), None)


def abandoned(start: Path | None = None) -> RunningStack | None:
    """A record here or above whose launcher is gone while some of its processes still run (the
    launcher was killed with SIGKILL): :func:`stop_abandoned` stops them."""
    return next((stack for stack in _records(start)
                 if not stack.alive() and any(p.alive() for p in stack.processes.values())), None)


def _records(start: Path | None) -> Iterator[RunningStack]:
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        stack = StateDir(directory / STATE_DIR).record()
        if stack is not None:
            yield stack


def stop_abandoned(stack: RunningStack, timeout_s: float) -> list[str]:
    """Stop the processes of a record whose launcher is gone, newest first as the launcher would
    (a pid with its start time names exactly the process recorded); forget the record. Returns
    `name (pid N)` for each one that was still running."""
    stopped = []
    for name, process in reversed(stack.processes.items()):
        if process.alive():
            process.stop(timeout_s)
            stopped.append(f"{name} (pid {process.pid})")
    StateDir(stack.state_dir).remove_record()
    return stopped


def client_settings(settings: Settings, start: Path | None = None) -> Settings:
    """`settings` for a command that talks to a control plane or mints tokens, completed from the
    local stack running here (:func:`discover`) where they say nothing: its URL when
    DUALPLANE_URL is unset; a token of :data:`LOCAL_USER` when DUALPLANE_TOKEN is unset too; its
    signing key when neither DUALPLANE_JWT_SECRET nor a private key file is set; its Redis and
    object store (with the kept keys) when REDIS_URL / S3_ENDPOINT are unset, for the commands
    that work on them directly (users, reconcile, models pull)."""
    stack = discover(start)
    if stack is None:
        return settings
    update: dict[str, Any] = {}
    if settings.redis_url is None:
        update["redis_url"] = stack.redis_url
    if settings.s3_endpoint is None and "s3" in stack.processes:  # its own store, with the keys it keeps
        access_key, secret_key = StateDir(stack.state_dir).s3_credentials()
        update.update(s3_endpoint=stack.s3_endpoint, s3_access_key=access_key, s3_secret_key=secret_key)
    secret = stack.jwt_secret()
    if "api_url" not in settings.model_fields_set:
        update["api_url"] = stack.url
        if not settings.token and secret:  # a token of this stack's key, for this stack only
            update["token"] = stack.mint_token()
    if secret and not settings.jwt_secret and not settings.jwt_private_key_file:
        update.update(jwt_secret=secret, jwt_algorithm="HS256")
    return settings.model_copy(update=update)


class StateDir:
    """The files of one `.dualplane/` directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Create it (0700), or tighten an existing one: it holds the stack's secrets."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)

    # -- kept choices -----------------------------------------------------------------------

    def kept_ports(self) -> dict[str, Any]:
        try:
            ports = json.loads((self.path / PORTS).read_text())
        except (OSError, ValueError):
            return {}  # first start (or a damaged file): everything is chosen afresh
        return ports if isinstance(ports, dict) else {}

    def keep_ports(self, ports: dict[str, Any]) -> None:
        _write_private(self.path / PORTS, json.dumps(ports, indent=2, sort_keys=True))

    @property
    def jwt_secret_file(self) -> Path:
        return self.path / JWT_SECRET

    def jwt_secret(self) -> str:
        return self._secret(self.jwt_secret_file, lambda: secrets.token_urlsafe(32))

    def s3_credentials(self) -> tuple[str, str]:
        made = json.dumps({"access_key": "dp" + secrets.token_hex(9), "secret_key": secrets.token_hex(20)})
        keys = json.loads(self._secret(self.path / S3_CREDENTIALS, lambda: made))
        return keys["access_key"], keys["secret_key"]

    def _secret(self, path: Path, make: Callable[[], str]) -> str:
        """The kept secret, made and written (0600) the first time; an existing file readable by
        others is tightened to 0600."""
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return path.read_text().strip()
        except FileNotFoundError:
            value = make()
            _write_private(path, value + "\n")
            return value

    # -- the running stack ------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this directory's stack lock (StackRunning when another launcher holds it); the
        kernel drops it when the process dies, however it dies."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                running = self.record()
                where = f" at {running.url} (launcher pid {running.launcher.pid})" if running else ""
                raise StackRunning(f"a local stack is already running in {self.path.parent}{where}; "
                                   "stop it with `dualplane down`") from None
            yield
        finally:
            os.close(fd)

    def record(self) -> RunningStack | None:
        """What ``stack.json`` says (live or stale), None when absent or unreadable."""
        try:
            return RunningStack.from_json((self.path / RECORD).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_record(self, stack: RunningStack) -> None:
        _write_private(self.path / RECORD, stack.to_json())

    def remove_record(self) -> None:
        (self.path / RECORD).unlink(missing_ok=True)

    def size_bytes(self) -> int:
        """Bytes of every regular file under it (data, logs, models)."""
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(root, name))
                    total += info.st_size if stat.S_ISREG(info.st_mode) else 0
        return total


def _write_private(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the old file or the new one), readable by us only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def stop(stack: RunningStack, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Stop a stack another process runs: SIGTERM to its launcher, which stops every child in
    order, as on Ctrl-C. Past `timeout_s`, SIGKILL the launcher and stop each child's process
    group. True when it stopped by itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(stack.launcher.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not stack.alive():
            return True
        time.sleep(poll_s)
    if stack.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(stack.launcher.pid, signal.SIGKILL)
    stop_abandoned(stack, KILLED_LAUNCHER_GRACE_S)
    return False
