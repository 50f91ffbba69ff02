"""WebSocket fan-out benchmark: delivered messages/s and publish → client latency.

Three kinds of processes on a redis-server this script starts:

* ONE hub process: uvicorn (uvloop, ``websockets-sansio``, no per-message deflate) serving
  :func:`dualplane.control_plane.hub.add_websocket_route` over a real Bridge;
* ``--procs`` client processes holding ``--clients`` WebSocket connections in all (a lean
  asyncio client: handshake, unmasked server frames, pong on ping), each subscribed to one
  of ``--jobs`` jobs (so ``clients / jobs`` subscribers per job);
* this process: creates the jobs and publishes data events through the real path
  (``Bridge.emit``: the Lua script appends to the stream and PUBLISHes) at ``--rate``
  deliveries/s. Latency = client receive time − the event's ``ts`` (set just before the
  emit goes out), on the same clock.

    .venv/bin/python bench/ws_fanout.py [--clients 1000] [--jobs 10] [--rate 20000] [--seconds 10]

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

SECRET = "bench-secret-bench-secret-bench-secret"
READY = "READY"


# -- hub process ----------------------------------------------------------------------


def serve_hub(redis_url: str, port: int, buffer_messages: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    from dualplane.common.bridge import Bridge
    from dualplane.common.settings import Settings
    from dualplane.control_plane.auth import Authenticator
    from dualplane.control_plane.hub import Hub, add_websocket_route

    bridge = Bridge(Settings(redis_url=redis_url).bridge_config())
    hub = Hub(bridge, buffer_messages=buffer_messages)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        import gc
        await bridge.connect()
        await hub.start()
        gc.freeze()
        yield
        await hub.stop()
        await bridge.close()

    app = FastAPI(lifespan=lifespan)
    add_websocket_route(app, hub, Authenticator(algorithm="HS256", secret=SECRET))
    uvicorn.run(app, host="127.0.0.1", port=port, ws="websockets-sansio", ws_per_message_deflate=False,
                loop="uvloop", log_level="warning", backlog=4096)


# -- client processes -----------------------------------------------------------------


class Client(asyncio.Protocol):
    """A minimal WebSocket client: the hub's cost is what is measured, not the client's."""

    def __init__(self, path: str, job_id: str, stats: dict, ready: asyncio.Future) -> None:
        self.path = path
        self.job_id = job_id
        self.stats = stats
        self.ready = ready
        self.buf = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((  # type: ignore[attr-defined]
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())

    def send_text(self, text: str, opcode: int = 1) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.transport.write(header + b"\0\0\0\0" + payload)  # zero mask key: payload unchanged

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101 " not in buf[:end].split(b"\r\n", 1)[0]:
                raise RuntimeError(buf[:end].decode())
            self.open = True
            buf = buf[end + 4:]
            self.send_text(json.dumps({"type": "subscribe", "jobId": self.job_id}))
        stats = self.stats
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if size - pos < head + n:
                break
            payload = buf[pos + head:pos + head + n]
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 1:
                if payload.startswith(b'{"type":"update"'):
                    now = time.time()
                    if stats["measuring"]:
                        # the event JSON is the tail; its "ts" is right after job_id and type
                        i = payload.rfind(b'"ts":')
                        j = payload.find(b",", i)
                        stats["lat"].append(now - float(payload[i + 5:j]))
                    stats["n"] += 1
                elif payload.startswith(b'{"type":"snapshot"') and not self.ready.done():
                    self.ready.set_result(None)
                elif payload.startswith(b'{"type":"error"'):
                    print("error", payload, file=sys.stderr)
            elif opcode == 9:  # ping
                self.send_text(payload.decode("latin-1"), opcode=0xA)
            elif opcode == 8:
                stats["closed"] += 1
                print("closed", payload[:2].hex(), payload[2:], file=sys.stderr)
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost before snapshot"))


async def run_clients(port: int, token: str, jobs: list[str], offset: int, count: int, out: str) -> None:
    loop = asyncio.get_running_loop()
    stats = {"n": 0, "lat": array("d"), "measuring": False, "closed": 0}
    readies = []
    path = f"/ws?token={token}"
    for i in range(offset, offset + count):
        ready = loop.create_future()
        job_id = jobs[i % len(jobs)]
        await loop.create_connection(lambda r=ready, j=job_id: Client(path, j, stats, r), "127.0.0.1", port)
        readies.append(ready)
    await asyncio.gather(*readies)
    print(READY, flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "start"
    stats["measuring"] = True
    n0, t0 = stats["n"], time.perf_counter()
    await reader.readline()  # "stop"
    stats["measuring"] = False
    elapsed = time.perf_counter() - t0
    Path(out).write_bytes(stats["lat"].tobytes())
    print(json.dumps({"received": stats["n"] - n0, "elapsed": elapsed, "closed": stats["closed"]}), flush=True)


# -- driver ---------------------------------------------------------------------------


def _cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(args: argparse.Namespace, redis_url: str) -> None:
    import uvloop  # noqa: F401  (the publisher loop is uvloop too: see main)

    from dualplane.common.bridge import Bridge
    from dualplane.common.graph import validate_graph
    from dualplane.common.job_state import Mutation, submit
    from dualplane.common.settings import Settings
    from dualplane.common.wire import event_body
    from dualplane.control_plane.auth import Authenticator
    from dualplane.tasks import default_registry

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    hub = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, __file__, "--serve-hub", redis_url, "--port", str(port), "--buffer", str(args.buffer)],
        env=env)
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="wsbench-"))
    try:
        async with Bridge(Settings(redis_url=redis_url).bridge_config()) as bridge:
            registry = default_registry()
            jobs = [f"bench{i}" for i in range(args.jobs)]
            for job_id in jobs:
                graph = validate_graph({"id": job_id, "nodes": [
                    {"id": "n", "task": "sleep", "plane": "python"}]}, registry)
                graph.metadata["name"] = job_id
                created = submit(job_id, graph, "python:bench", request_id=None, user="bench")
                await bridge.create_job(job_id, graph, created, lane="python:bench", request_id=None, user="bench")
            for _ in range(200):  # wait for the hub
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    await asyncio.sleep(0.05)
            token = Authenticator(algorithm="HS256", secret=SECRET).mint("bench")
            per = args.clients // args.procs
            t_connect = time.perf_counter()
            for p in range(args.procs):
                count = per if p < args.procs - 1 else args.clients - per * (args.procs - 1)
                procs.append(subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, __file__, "--client", str(port), token, ",".join(jobs), str(p * per),
                     str(count), str(tmp / f"lat{p}")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                    text=True))
            for proc in procs:
                line = await asyncio.to_thread(proc.stdout.readline)
                if line.strip() != READY:
                    raise RuntimeError(f"client process failed: {line!r}")
            print(f"{args.clients} clients connected and subscribed in {time.perf_counter() - t_connect:.1f}s "
                  f"({args.clients // args.jobs} per job, {args.jobs} jobs, {args.procs} client processes)")

            per_job = args.clients / args.jobs
            publishes_per_s = args.rate / per_job
            tick = 0.005
            sent = 0

            async def publish(seconds: float) -> None:
                nonlocal sent
                start = time.perf_counter()
                due = 0.0
                while (now := time.perf_counter()) - start < seconds:
                    target = (now - start) * publishes_per_s
                    batch = []
                    while due < target:
                        batch.append(jobs[int(due) % len(jobs)])
                        due += 1
                    for job_id in batch:
                        bridge.emit_nowait(job_id, Mutation(events=[event_body("data", job_id, data={"i": sent})]))
                        sent += 1
                    await asyncio.sleep(tick)

            await publish(args.warmup)
            for proc in procs:
                proc.stdin.write("start\n")
                proc.stdin.flush()
            sent0 = sent
            t0 = time.perf_counter()
            hub_cpu0 = _cpu_s(hub.pid)
            clients_cpu0 = sum(sum(_cpu_s(proc.pid)) for proc in procs)
            await publish(args.seconds)
            published = sent - sent0
            window = time.perf_counter() - t0
            hub_cpu = [b - a for a, b in zip(hub_cpu0, _cpu_s(hub.pid), strict=True)]
            clients_cpu = sum(sum(_cpu_s(proc.pid)) for proc in procs) - clients_cpu0
            await asyncio.sleep(0.5)  # let the last events land (latencies are per message anyway)
            for proc in procs:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            results = [json.loads(await asyncio.to_thread(proc.stdout.readline)) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
        hub.send_signal(signal.SIGINT)
        try:
            hub.wait(10)
        except subprocess.TimeoutExpired:
            hub.kill()

    lat = array("d")
    for p in range(len(procs)):
        lat.frombytes((tmp / f"lat{p}").read_bytes())
    received = sum(r["received"] for r in results)
    closed = sum(r["closed"] for r in results)
    ordered = sorted(lat)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    expected = published * per_job
    print(f"offered: {args.rate:,.0f} deliveries/s = {publishes_per_s:,.0f} publishes/s x {per_job:.0f} subscribers")
    print(f"published {published:,} events in {window:.1f}s; delivered {received:,} messages "
          f"({received / expected:.1%} of {expected:,.0f} expected); closed connections: {closed}")
    print(f"delivered: {received / window:,.0f} messages/s across {args.clients} clients")
    print(f"latency publish -> client (ms): p50 {pct(0.50):.2f}  p90 {pct(0.90):.2f}  "
          f"p99 {pct(0.99):.2f}  max {pct(1.0):.2f}")
    # On a small machine the clients compete with the hub for the same cores: a hub short of
    # 100% of one core that still lags is waiting for CPU, not saturated.
    print(f"CPU during the window (cores): hub {sum(hub_cpu) / window:.2f} (user {hub_cpu[0] / window:.2f}, "
          f"system {hub_cpu[1] / window:.2f}); client processes {clients_cpu / window:.2f} in all")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-hub":
        parser = argparse.ArgumentParser()
        parser.add_argument("--serve-hub")
        parser.add_argument("--port", type=int)
        parser.add_argument("--buffer", type=int)
        a = parser.parse_args()
        serve_hub(a.serve_hub, a.port, a.buffer)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        import uvloop
        port, token, jobs, offset, count, out = sys.argv[2:8]
        uvloop.run(run_clients(int(port), token, jobs.split(","), int(offset), int(count), out))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20000, help="offered deliveries/s (all clients)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--buffer", type=int, default=1000, help="hub buffer_messages")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args()

    import uvloop

    from dualplane.devstack.services import start_redis

    if args.redis_url:
        uvloop.run(drive(args, args.redis_url))
        return
    with start_redis(Path(tempfile.mkdtemp(prefix="wsbench-redis-"))) as server:
        uvloop.run(drive(args, server.url))


if __name__ == "__main__":
    main()
