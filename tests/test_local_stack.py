"""The local stack keeps its state and leaves nothing behind: `dualplane up --no-demo` run as a
person runs it (real Redis, SeaweedFS, control plane and worker as processes), and the commands
that find it by themselves (`token`, `submit`, `status`, `down`).

The starts share one directory per module: the first builds the tiny models into its object
store, the later ones find them there (as a second `make run` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dualplane.cli.output import EXIT_INTERRUPTED
from dualplane.common.settings import Settings
from dualplane.devstack.local_stack import (
    LOCAL_USER,
    Process,
    RunningStack,
    StateDir,
    client_settings,
    discover,
    process_started,
)
from dualplane.devstack.stack import Child
from tests.test_cli import assert_nothing_left, clean_env, line_reader, read_until

SERVING = "Ctrl-C to stop"
START_TIMEOUT_S = 120  # the first start builds the tiny models on a busy 2-core machine
STOP_TIMEOUT_S = 90


def starts_stacks(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that starts stacks: real processes, and up to two starts and a tiny-model build,
    which fit in 300 s on a busy 2-core machine."""
    return pytest.mark.integration(pytest.mark.slow(pytest.mark.timeout(300)(test)))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


def dualplane(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None,
              timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dualplane", *args], cwd=cwd, env={**clean_env(), **(env or {})},
                          input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)


@contextmanager
def up(root: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`dualplane up --no-demo` until it serves; always gone afterwards (killed if need be)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dualplane", "up", "--no-demo"], cwd=root, env=clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines, seen = line_reader(process), []
    try:
        read_until(lines, SERVING, seen, timeout_s=START_TIMEOUT_S)
        yield process, seen
        with_rest(lines, seen, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def with_rest(lines: queue.Queue[str | None], seen: list[str], process: subprocess.Popen[str]) -> None:
    """Everything the launcher printed until it exited (it must exit by itself)."""
    process.wait(timeout=STOP_TIMEOUT_S)
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)


def recorded_pids(stack: RunningStack) -> set[int]:
    return {stack.launcher.pid, *(p.pid for p in stack.processes.values())}


def group_members(groups: set[int]) -> list[str]:
    """Live processes whose process group or session is one of `groups` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and ({int(fields[2]), int(fields[3])} & groups):
                found.append(f"{entry.name} (group {fields[2]}, session {fields[3]})")
    return found


def assert_all_gone(stack: RunningStack, root: Path) -> None:
    pids = recorded_pids(stack)
    assert_nothing_left(pids, root)
    assert not group_members(pids), group_members(pids)


# -- the stack, end to end ---------------------------------------------------------------------


@starts_stacks
def test_restart_keeps_jobs_artifacts_tokens_and_ports(root: Path) -> None:
    with up(root) as (process, seen):
        stack = discover(root)
        assert stack is not None and stack.launcher.pid == process.pid, "".join(seen)
        state = root / ".dualplane"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for secret in ("jwt-secret", "s3-credentials.json"):
            assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600, secret

        # the client commands find the stack: `token` signs with its kept key, `submit` finds its URL
        minted = dualplane("token", "--user", "alice", cwd=root)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        (root / "graph.json").write_text(json.dumps({"id": "kept", "nodes": [
            {"id": "sum", "task": "checksum", "plane": "python", "params": {"text": "kept across restarts"}}]}))
        submitted = dualplane("submit", "graph.json", "--wait", "60", cwd=root, env={"DUALPLANE_TOKEN": token})
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = re.search(r"^job (\S+) succeeded", submitted.stdout, re.MULTILINE).group(1)

        # so do the commands that work on its Redis directly: an account, then a login with it
        added = dualplane("users", "add", "carol", "--password-stdin", cwd=root, stdin="a long secret\n")
        assert added.returncode == 0, added.stderr
        login = dualplane("login", "carol", "--password-stdin", cwd=root, stdin="a long secret\n")
        assert login.returncode == 0 and login.stdout.count(".") == 2, login.stderr  # a JWT

        status = dualplane("status", cwd=root)
        assert status.returncode == 0, status.stdout
        assert stack.url in status.stdout and re.search(r"jobs\s+1 \(0 unfinished\)", status.stdout), status.stdout
        for name in ("redis", "s3", "control-plane", "worker"):
            assert re.search(rf"{name}\s+pid {stack.processes[name].pid}\s+running", status.stdout), status.stdout

        # `down` from another terminal stops it the way Ctrl-C does
        down = dualplane("down", cwd=root)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0
    assert_all_gone(stack, root)
    assert "no local stack is running" in dualplane("status", cwd=root).stdout
    assert discover(root) is None

    # something else now listens on the worker's kept port: the next start says so and moves
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.ports["worker"]))
        squatter.listen()
        with up(root) as (process, seen):
            again = discover(root)
            assert again is not None, "".join(seen)
            moved = f"port {stack.ports['worker']}, kept for the worker, is taken by another process: using " \
                    f"{again.ports['worker']} from now on"
            assert moved in "".join(seen)
            assert again.ports["worker"] != stack.ports["worker"]
            assert StateDir(root / ".dualplane").kept_ports()["worker"] == again.ports["worker"]
            assert again.url == stack.url and again.ports["redis"] == stack.ports["redis"], "".join(seen)

            # the job, its artifact and the token minted before the restart are all still good
            with httpx.Client(base_url=again.url, headers={"Authorization": f"Bearer {token}"}) as http:
                job = http.get(f"/jobs/{job_id}").raise_for_status().json()
                assert job["status"] == "succeeded"
                (artifact,) = http.get(f"/jobs/{job_id}/artifacts").raise_for_status().json()["artifacts"]
                body = httpx.get(artifact["url"]).raise_for_status().text
            assert body == hashlib.sha256(b"kept across restarts").hexdigest() + "\n"
            process.send_signal(signal.SIGINT)
    assert process.returncode == 0, "".join(seen)
    assert_all_gone(again, root)


#: Run in a new session: take the pty on stdin as the controlling terminal (as a shell's is),
#: then become `dualplane up` (exec: same pid, still the session leader).
ON_A_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'dualplane', 'up', '--no-demo'])")


@starts_stacks
def test_closing_the_terminal_stops_every_process(root: Path) -> None:
    """The launcher is a session leader on a pty; closing the pty's master hangs the terminal up:
    the kernel sends it SIGHUP, and its writes to the terminal fail from then on."""
    master, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL], cwd=root, env=clean_env(),
        stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while SERVING.encode() not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                output += os.read(master, 65536)
        stack = discover(root)
        assert stack is not None, output.decode(errors="replace")
    finally:
        os.close(master)  # the terminal is closed
    try:
        # a clean stop (130 when the hang-up came before serving had begun), not death by SIGHUP (-1)
        assert process.wait(timeout=STOP_TIMEOUT_S) in (0, EXIT_INTERRUPTED)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_all_gone(stack, root)
    assert discover(root) is None


@starts_stacks
def test_a_child_that_dies_is_reported_and_the_stack_stops(root: Path) -> None:
    with up(root) as (process, seen):
        stack = discover(root)
        assert stack is not None, "".join(seen)
        victim = stack.processes["control-plane"].pid
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 1
    out = "".join(seen)
    report = re.search(rf"error: control-plane \(pid {victim}\) was killed by SIGKILL, so the stack stops; "
                       r"the last lines of (\S+/control-plane\.log):\n((?:  .*\n)+)", out)
    assert report, out
    log_lines = Path(report.group(1)).read_text().splitlines()
    assert log_lines and log_lines[-1].strip() in report.group(2), out  # uvicorn's start-up lines at least
    assert out.splitlines()[-1] == "stopped"
    assert_all_gone(stack, root)


@starts_stacks
def test_the_next_start_stops_what_a_killed_launcher_left(root: Path) -> None:
    with up(root) as (process, seen):
        stack = discover(root)
        assert stack is not None, "".join(seen)
        process.kill()  # SIGKILL: no clean-up at all; its children run on in their own sessions
        process.wait()
        assert all(p.alive() for p in stack.processes.values())
        assert discover(root) is None
        status = dualplane("status", cwd=root)
        assert status.returncode == 1 and "processes of one whose launcher was killed still run" in status.stdout
    with up(root) as (process, seen):
        left = ", ".join(f"{name} (pid {p.pid})" for name, p in reversed(stack.processes.items()))
        assert f"stopped what an earlier stack here left running (its launcher was killed): {left}" in "".join(seen)
        assert not any(p.alive() for p in stack.processes.values())
        again = discover(root)
        assert again is not None and again.url == stack.url, "".join(seen)  # its ports were free again
        process.send_signal(signal.SIGINT)
    assert_all_gone(again, root)


# -- pieces, without processes -----------------------------------------------------------------


def test_exit_report_names_the_child_its_code_and_its_log_end(tmp_path: Path) -> None:
    log = tmp_path / "s3.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    child = Child("s3", subprocess.Popen(["sh", "-c", "exit 3"]), log)
    child.process.wait()
    report = child.exit_report()
    assert report.startswith(f"s3 (pid {child.process.pid}) exited with code 3, so the stack stops;")
    assert "  line 29" in report and "  line 10" in report and "line 9\n" not in report  # the last 20 lines


def test_kept_secrets_are_private_and_stable(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".dualplane")
    state.create()
    secret = state.jwt_secret()
    assert len(secret) >= 32 and state.jwt_secret() == secret
    assert state.s3_credentials() == state.s3_credentials()
    assert stat.S_IMODE(state.jwt_secret_file.stat().st_mode) == 0o600
    state.jwt_secret_file.chmod(0o644)  # loosened by hand: tightened again when read
    assert state.jwt_secret() == secret and stat.S_IMODE(state.jwt_secret_file.stat().st_mode) == 0o600
    (tmp_path / ".dualplane").chmod(0o755)
    state.create()
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700


def _record(root: Path, *, started: int | None) -> StateDir:
    state = StateDir(root / ".dualplane")
    state.create()
    state.jwt_secret()
    me = os.getpid()
    state.write_record(RunningStack(
        state_dir=state.path, url="http://127.0.0.1:1234", launcher=Process(me, started), started_at=time.time(),
        redis_url="redis://127.0.0.1:1/0", s3_endpoint="127.0.0.1:2", processes={}, ports={},
        jwt_secret_file=str(state.jwt_secret_file),
    ))  # fmt: skip
    return state


def test_discover_finds_a_live_stack_from_below_and_ignores_a_stale_one(tmp_path: Path) -> None:
    state = _record(tmp_path, started=process_started(os.getpid()))
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    found = discover(below)
    assert found is not None and found.url == "http://127.0.0.1:1234"
    _record(tmp_path, started=(process_started(os.getpid()) or 0) + 1)  # the pid now names another process
    assert discover(below) is None
    assert state.record() is not None  # stale, but left for `up` to clean


def test_client_settings_take_the_stack_where_the_environment_is_silent(tmp_path: Path) -> None:
    state = _record(tmp_path, started=process_started(os.getpid()))
    from dualplane.control_plane.auth import Authenticator

    found = client_settings(Settings(), tmp_path)
    assert found.api_url == "http://127.0.0.1:1234" and found.jwt_secret == state.jwt_secret()
    assert found.redis_url == "redis://127.0.0.1:1/0"
    assert found.s3_endpoint is None  # the record names no store of its own: its keys are not ours to guess
    assert Authenticator(algorithm="HS256", secret=state.jwt_secret()).verify(found.token).user == LOCAL_USER
    explicit = client_settings(Settings(api_url="http://elsewhere:9", jwt_secret="x" * 32), tmp_path)
    assert explicit.api_url == "http://elsewhere:9" and explicit.token is None and explicit.jwt_secret == "x" * 32
    assert client_settings(Settings(token="mine"), tmp_path).token == "mine"
    assert client_settings(Settings(), tmp_path / "..").api_url == Settings().api_url  # nothing runs there


def test_down_stops_what_a_killed_launcher_left(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a worker whose launcher died
    try:
        state = StateDir(tmp_path / ".dualplane")
        state.create()
        state.write_record(RunningStack(
            state_dir=state.path, url="http://127.0.0.1:1234", launcher=Process(os.getpid(), 1), started_at=0,
            redis_url="", s3_endpoint="", processes={"worker": Process(orphan.pid, process_started(orphan.pid))},
        ))  # fmt: skip
        status = dualplane("status", cwd=tmp_path)
        assert status.returncode == 1 and f"still run: worker (pid {orphan.pid})" in status.stdout, status.stdout
        down = dualplane("down", cwd=tmp_path)
        assert down.stdout.strip() == f"stopped what a killed launcher left running: worker (pid {orphan.pid})"
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert state.record() is None
    finally:
        orphan.kill()
        orphan.wait()
