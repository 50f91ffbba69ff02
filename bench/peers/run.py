"""Peer benchmark: dualplane against Dramatiq, saq, arq and Celery on one local Redis.

    .venv/bin/python bench/peers/run.py [--jobs 5000] [--latency 300] [--reps 3]
        [--systems dualplane,dramatiq,saq,arq,celery] [--processes 1,2] [--quick] [--fresh]

Run by hand (not by ``make test``). One redis-server (started here on a free port, FLUSHALL
before every run) serves every system; the runs are interleaved: for each rep, for each worker
count, for each system. Each run starts the system's worker process(es) and its producer
(peerlib: warm-up, N no-op jobs enqueued one by one then each result waited for in order with
the library's own result API, then sequential round trips), and reads the CPU time (user + sys)
of the worker process trees and the producer, and of redis-server, over the throughput phase.

The peers live in their own virtual environments (envs.py; cached under
``$XDG_CACHE_HOME/dualplane-peers`` or ``/tmp/dualplane-peers``); dualplane runs from this
interpreter. Prints one table; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import envs
import psutil
import redis

from dualplane.devstack.services import start_redis, terminate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SYSTEMS = ("dualplane", "dramatiq", "saq", "arq", "celery")
#: dualplane from another checkout (``--baseline``): a before/after in the same interleaved run.
BASELINE = "dualplane-baseline"
#: How each system's workers are run, for the table's header.
SETTINGS = {
    "dualplane": "P × `dualplane worker` (concurrency 512, read batch 512), uvloop; producer: ControlPlane in-process",
    "dramatiq": "`dramatiq --processes P --threads 8`, Results middleware, Redis backend",
    "saq": "P × Worker(concurrency=32) on uvloop",
    "arq": "P × arq worker (max_jobs 64, poll_delay 10 ms) on uvloop; job.result(poll_delay=10 ms)",
    "celery": "P × `celery worker -P solo` (prefetch multiplier 128, no gossip/mingle/heartbeat)",
}
STOP_S = 5.0


@dataclass
class Run:
    system: str
    workers: int
    jobs_per_s: float = 0.0
    cpu_ms_per_job: float = 0.0  # workers + producer
    producer_cpu_ms_per_job: float = 0.0
    redis_cpu_ms_per_job: float = 0.0
    #: Commands Redis ran per job over the throughput phase (INFO commandstats: what a
    #: script runs included), and the script calls among them.
    redis_commands_per_job: float = 0.0
    script_calls_per_job: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    measured: int = 0  # processes whose CPU time was counted (worker trees + producer)
    error: str | None = None


class Producer:
    """The producer child: its ``@@peer`` lines on a queue, everything else to its log."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log_file, text=True, start_new_session=True)
        self._lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("@@peer "):
                self._lines.put(json.loads(line.removeprefix("@@peer ")))
            else:
                self._log_file.write(line)
                self._log_file.flush()
        self._lines.put(None)

    def expect(self, kind: str, timeout_s: float) -> dict:
        try:
            message = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"no {kind!r} from the producer within {timeout_s:.0f} s") from None
        if message is None:
            self.process.wait(5)
            raise RuntimeError(f"the producer exited ({self.process.returncode}) before {kind!r}")
        if message["kind"] != kind:
            raise RuntimeError(f"expected {kind!r} from the producer, got {message!r}")
        return message

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        terminate(self.process, STOP_S, group=True)
        self._log_file.close()


def cpu_s(pids: list[int]) -> tuple[float, int]:
    """User + system CPU seconds of these processes and all their descendants, now, and how many
    processes that is."""
    total, count = 0.0, 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
                count += 1
    return total, count


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, redis_pid: int, logs: Path,
                 pythons: dict[str, str]) -> None:
        #: Where each dualplane checkout lives (the baseline's producer and workers run from its own).
        self.roots = {"dualplane": ROOT, BASELINE: args.baseline}
        self.args = args
        self.url = url
        self.redis_pid = redis_pid
        self.logs = logs
        self.pythons = pythons
        self.count = 0

    def env(self, system: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "S3_ENDPOINT")}
        root = self.roots.get(system)
        path = [str(self.folder(system))] + ([str(root)] if root is not None else [])
        env.update(PEER_REDIS_URL=self.url, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")
        return env

    def folder(self, system: str) -> Path:
        """Where the system's producer script is, and its processes' working directory."""
        root = self.roots.get(system)
        return HERE if root is None else root / "bench" / "peers"

    def worker_commands(self, system: str, workers: int) -> list[tuple[list[str], dict[str, str]]]:
        python = self.pythons[system]
        env = self.env(system)
        if system in self.roots:
            return [([python, "-m", "dualplane", "worker"],
                     dict(env, REDIS_URL=self.url, DUALPLANE_CONCURRENCY="512", DUALPLANE_READ_BATCH="512",
                          DUALPLANE_WORKER_ID=f"peers-worker-{i}", DUALPLANE_WORKER_PORT="0",
                          DUALPLANE_LOG_LEVEL="WARNING")) for i in range(workers)]
        if system == "dramatiq":
            return [([python, "-m", "dramatiq", "peer_dramatiq", "--processes", str(workers), "--threads", "8"], env)]
        if system == "celery":
            return [([python, "-m", "celery", "-A", "peer_celery", "worker", "-P", "solo", "-Q", "bench",
                      "-n", f"w{i}@bench", "--without-gossip", "--without-mingle", "--without-heartbeat",
                      "--loglevel", "WARNING"], env) for i in range(workers)]
        return [([python, f"peer_{system}.py", "worker", "--index", str(i)], env) for i in range(workers)]

    def producer_command(self, system: str, workers: int) -> list[str]:
        a = self.args
        script = "peer_dualplane.py" if system in self.roots else f"peer_{system}.py"
        return [self.pythons[system], script, "produce", "--jobs", str(a.jobs), "--latency",
                str(a.latency), "--warmup", str(a.warmup), "--workers", str(workers)]

    def run(self, system: str, workers: int) -> Run:
        self.count += 1
        tag = f"{self.count:02d}-{system}-{workers}"
        result = Run(system, workers)
        with redis.Redis.from_url(self.url) as client:
            client.flushall()
        procs: list[subprocess.Popen[bytes]] = []
        producer: Producer | None = None
        try:
            for i, (command, env) in enumerate(self.worker_commands(system, workers)):
                with (self.logs / f"{tag}-worker{i}.log").open("wb") as log:
                    procs.append(subprocess.Popen(command, env=env, cwd=self.folder(system), stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True))
            producer = Producer(self.producer_command(system, workers), self.env(system),
                                self.logs / f"{tag}-producer.log", self.folder(system))
            producer.expect("ready", 120)
            pids = [p.pid for p in procs] + [producer.process.pid]
            mine = [producer.process.pid]
            with redis.Redis.from_url(self.url) as client:
                client.config_resetstat()
            (before, _), (own_before, _), (redis_before, _) = cpu_s(pids), cpu_s(mine), cpu_s([self.redis_pid])
            producer.go()
            done = producer.expect("done", 60 + self.args.jobs / 20)
            (after, result.measured), (own_after, _), (redis_after, _) = (
                cpu_s(pids), cpu_s(mine), cpu_s([self.redis_pid]))
            with redis.Redis.from_url(self.url) as client:
                ran, scripts = command_counts(client.info("commandstats"))
            result.redis_commands_per_job = ran / self.args.jobs
            result.script_calls_per_job = scripts / self.args.jobs
            producer.go()
            final = producer.expect("result", 60 + self.args.latency / 5)
            result.latency_ms, result.notes = final["latency_ms"], final.get("notes") or {}
            result.jobs_per_s = self.args.jobs / done["elapsed"]
            result.cpu_ms_per_job = (after - before) * 1000 / self.args.jobs
            result.producer_cpu_ms_per_job = (own_after - own_before) * 1000 / self.args.jobs
            result.redis_cpu_ms_per_job = (redis_after - redis_before) * 1000 / self.args.jobs
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited ({proc.returncode}) during the run")
        except Exception as exc:
            result.error = f"{exc} (logs: {self.logs}/{tag}-*.log)"
        finally:
            if producer is not None:
                producer.stop()
            for proc in procs:
                terminate(proc, STOP_S, group=True)
        return result


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def command_counts(stats: dict) -> tuple[int, int]:
    """(commands Redis ran, script calls among them) from INFO commandstats since the last
    CONFIG RESETSTAT (the reset itself left out). Redis counts each command a script runs
    under that command, and the script once more under EVALSHA/EVAL/FCALL."""
    ran = scripts = 0
    for name, row in stats.items():
        command = name.removeprefix("cmdstat_")
        if command.startswith("config"):
            continue
        ran += int(row["calls"])
        if command in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"):
            scripts += int(row["calls"])
    return ran, scripts


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def table(runs: list[Run], systems: list[str], processes: list[int]) -> str:
    rows = []
    summary = {}
    for workers in processes:
        for system in systems:
            ok = [r for r in runs if r.system == system and r.workers == workers and r.error is None]
            failed = sum(1 for r in runs if r.system == system and r.workers == workers and r.error is not None)
            if not ok:
                summary[system, workers] = None
                continue
            rates = [r.jobs_per_s for r in ok]
            samples = [s for r in ok for s in r.latency_ms]
            summary[system, workers] = {
                "rate": statistics.median(rates), "min": min(rates), "max": max(rates),
                "p50": pct(samples, 50), "p99": pct(samples, 99),
                "cpu": statistics.median(r.cpu_ms_per_job for r in ok),
                "own": statistics.median(r.producer_cpu_ms_per_job for r in ok),
                "redis": statistics.median(r.redis_cpu_ms_per_job for r in ok),
                "commands": statistics.median(r.redis_commands_per_job for r in ok),
                "scripts": statistics.median(r.script_calls_per_job for r in ok),
                "reps": len(ok), "failed": failed,
            }
    head = ("| system | worker procs | jobs/s median [min–max] | × dualplane | round trip p50 / p99 ms "
            "| CPU-ms/job: workers + producer (producer) | redis CPU-ms/job | redis commands/job (scripts) | reps |")
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for workers in processes:
        dual = summary.get(("dualplane", workers))
        peers = {s: v for (s, w), v in summary.items() if w == workers and s not in ("dualplane", BASELINE) and v}
        baseline = summary.get((BASELINE, workers))
        for system in systems:
            v = summary.get((system, workers))
            if v is None:
                rows.append(f"| {system} | {workers} | failed | | | | | | 0 |")
                continue
            ratio = f"{v['rate'] / dual['rate']:.2f}" if dual else "–"
            reps = f"{v['reps']}" + (f" ({v['failed']} failed)" if v["failed"] else "")
            rows.append(f"| {system} | {workers} | {v['rate']:,.0f} [{v['min']:,.0f}–{v['max']:,.0f}] | {ratio} "
                        f"| {v['p50']:.2f} / {v['p99']:.2f} | {v['cpu']:.3f} ({v['own']:.3f}) | {v['redis']:.3f} "
                        f"| {v['commands']:.1f} ({v['scripts']:.1f}) | {reps} |")
        if dual and peers:
            fastest = max(peers, key=lambda s: peers[s]["rate"])
            quickest = min(peers, key=lambda s: peers[s]["p50"])
            line = (f"{workers} worker process(es): dualplane / best peer ({fastest}) jobs/s = "
                    f"{dual['rate'] / peers[fastest]['rate']:.2f}×; round trip p50/p99 "
                    f"{dual['p50']:.2f}/{dual['p99']:.2f} ms vs {quickest}'s {peers[quickest]['p50']:.2f}/"
                    f"{peers[quickest]['p99']:.2f} ms")
            if "dramatiq" in peers:
                line += f"; CPU-ms/job dualplane / Dramatiq = {dual['cpu'] / peers['dramatiq']['cpu']:.2f}"
            notes.append(line)
        if dual and baseline:
            notes.append(f"{workers} worker process(es): dualplane / its baseline: jobs/s {dual['rate'] / baseline['rate']:.2f}×, "
                         f"round trip p50 {dual['p50']:.2f} vs {baseline['p50']:.2f} ms, p99 {dual['p99']:.2f} vs "
                         f"{baseline['p99']:.2f} ms, CPU-ms/job {dual['cpu']:.3f} vs {baseline['cpu']:.3f}")
    return "\n".join(rows + [""] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs in each throughput phase")
    parser.add_argument("--latency", type=int, default=300, help="sequential round trips in each latency phase")
    parser.add_argument("--warmup", type=int, default=300, help="no-op jobs before timing")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--processes", default="1,2", help="worker process counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 rep, 300 jobs, 30 round trips")
    parser.add_argument("--fresh", action="store_true", help="rebuild the peers' virtual environments")
    parser.add_argument("--venvs", type=Path, default=envs.default_cache(), help="where the peers' venvs are cached")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another dualplane checkout (a git worktree of an earlier commit, say), run as the row "
                             f"{BASELINE!r} right after dualplane in every round: before and after, interleaved")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run's logs even when every run passed")
    if "--quick" in sys.argv[1:]:  # smaller defaults; what the command line gives still wins
        parser.set_defaults(jobs=300, latency=30, warmup=50, reps=1)
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)} (known: {', '.join(SYSTEMS)})")
    processes = [int(p) for p in args.processes.split(",")]
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "bench" / "peers" / "peer_dualplane.py").is_file():
            parser.error(f"--baseline {args.baseline}: no bench/peers/peer_dualplane.py there")
        if "dualplane" in systems:
            systems.insert(systems.index("dualplane") + 1, BASELINE)

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every finally below stops what it started
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    pythons = {"dualplane": sys.executable, BASELINE: sys.executable}
    versions = {"dualplane": {"dualplane": __import__("dualplane").__version__,
                              "redis": redis.__version__, "python": sys.version.split()[0],
                              "commit": git_commit(ROOT)}}
    if args.baseline is not None:
        versions[BASELINE] = {"checkout": str(args.baseline), "commit": git_commit(args.baseline)}
        SETTINGS[BASELINE] = SETTINGS["dualplane"]
    for system in systems:
        if system not in ("dualplane", BASELINE):
            root, versions[system] = envs.ensure(system, args.venvs, fresh=args.fresh)
            pythons[system] = str(root / "bin" / "python")

    print(f"peer benchmark: {args.jobs} no-op jobs enqueued one by one then each result awaited in order, "
          f"{args.latency} sequential round trips, {args.warmup} warm-up jobs; {args.reps} rep(s), interleaved; "
          f"worker processes {args.processes}; one local redis-server; {os.cpu_count()} CPUs", flush=True)
    for system in systems:
        print(f"  {system}: {' '.join(f'{k} {v}' for k, v in versions[system].items())}; {SETTINGS[system]}")
    logs = Path(tempfile.mkdtemp(prefix="dp-peers-"))
    runs: list[Run] = []
    started = time.monotonic()
    try:
        with start_redis(logs / "redis") as server:
            bench = Bench(args, server.url, server.process.pid, logs, pythons)
            for rep in range(1, args.reps + 1):
                for workers in processes:
                    for system in systems:
                        run = bench.run(system, workers)
                        runs.append(run)
                        if run.error:
                            print(f"  rep {rep} {system} ×{workers}: FAILED: {run.error}", flush=True)
                        else:
                            print(f"  rep {rep} {system} ×{workers}: {run.jobs_per_s:,.0f} jobs/s, p50 "
                                  f"{pct(run.latency_ms, 50):.2f} ms, p99 {pct(run.latency_ms, 99):.2f} ms, "
                                  f"{run.cpu_ms_per_job:.3f} CPU-ms/job (producer {run.producer_cpu_ms_per_job:.3f}; + redis {run.redis_cpu_ms_per_job:.3f}), "
                                  f"{run.redis_commands_per_job:.1f} redis commands/job ({run.script_calls_per_job:.1f} scripts), "
                                  f"{run.measured} processes"
                                  + (f"; {run.notes}" if run.notes else ""),
                                  flush=True)
    except KeyboardInterrupt:
        print("interrupted; the runs so far:", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s\n")
    print(table(runs, systems, processes))
    if any(r.error for r in runs) or args.keep_logs:
        print(f"\nlogs: {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
