"""`dualplane demo` / `dualplane up` end to end, as a person runs them: a real Redis, a real
SeaweedFS, a control plane and a worker as processes. Each test runs in its own tmp directory
(so `.dualplane/` lands there) and then proves that nothing it started is still alive."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import descendants, pid_alive

pytestmark = pytest.mark.integration

PID_RE = re.compile(r"\bpid (\d+)\b")


def clean_env() -> dict[str, str]:
    """No REDIS_URL / S3_* / DUALPLANE_* from the caller: the stack must start its own servers."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DUALPLANE_", "REDIS_", "S3_"))}  # fmt: skip


def start(command: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dualplane", command], cwd=cwd, env=clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def line_reader(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Lines of the child's output on a queue (None at EOF), so waits can time out."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read_until(
    lines: queue.Queue[str | None], marker: str, seen: list[str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return
    pytest.fail(f"no {marker!r} within {timeout_s} s; output:\n{''.join(seen)}")


def processes_touching(directory: Path) -> list[str]:
    """Live processes whose command line names `directory` or whose cwd lies under it (Linux)."""
    found, needle = [], str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def assert_nothing_left(pids: set[int], directory: Path) -> None:
    alive = {pid for pid in pids if pid_alive(pid)}
    assert not alive, f"still alive: {alive}"
    assert not processes_touching(directory), processes_touching(directory)


def test_demo_succeeds_and_leaves_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dualplane", "demo", "--timeout", "120"], check=False, cwd=tmp_path,
        env=clean_env(), capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"seq \d+\s+music\s+\[#+\.*\]\s+\d+%", out), out  # live progress lines
    assert re.search(r"seq \d+\s+video\s+\[#+\.*\]\s+\d+%", out), out
    assert re.search(r"seq \d+\s+music\s+running\s+attempt 1", out), out
    assert re.search(r"^job \S+ succeeded$", out, re.MULTILINE), out
    for artifact in (r"music/music\.wav", r"music/music\.mid", r"narration/voice\.wav", r"video/visualizer\.mp4",
                     r"video/lyrics\.vtt", r"final/final\.mp4"):
        assert re.search(artifact + r"\s+http://127\.0\.0\.1:\d+/\S+X-Amz-Signature=", out), out
    assert (tmp_path / ".dualplane" / "logs" / "worker.log").is_file()
    pids = {int(pid) for pid in PID_RE.findall(out)}
    assert len(pids) == 4, out  # redis, weed, control plane, worker
    assert_nothing_left(pids, tmp_path)


def test_up_serves_until_sigint_then_stops_everything(tmp_path: Path) -> None:
    process = start("up", tmp_path)
    lines, seen = line_reader(process), []
    try:
        read_until(lines, "Ctrl-C to stop", seen, timeout_s=180)  # builds the tiny models, then runs the demo job
        started = descendants(process.pid)
        assert len(started) >= 4, "".join(seen)
        assert any("job" in line and "succeeded" in line for line in seen), "".join(seen)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    read_until(lines, "stopped", seen, timeout_s=5)
    assert_nothing_left(started, tmp_path)


def test_sigint_during_start_up_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C while the object store is still starting (redis already up) cleans up too."""
    process = start("demo", tmp_path)
    lines, seen = line_reader(process), []
    try:
        read_until(lines, "redis ", seen, timeout_s=30)
        started = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130, "".join(seen)  # EXIT_INTERRUPTED
    assert_nothing_left(started, tmp_path)
