"""`dualplane worker --processes N`: N worker processes under one supervisor.

Each child is ``python -m dualplane worker`` with its environment adjusted: its own worker id
(``<DUALPLANE_WORKER_ID>-<index>``), its own metrics port (``DUALPLANE_WORKER_PORT`` + index, or
0 for any) and ``DUALPLANE_WORKER_PROCESSES=1``, which makes it run the worker in-process rather
than supervise. Children rather than ``multiprocessing``: each is exactly the worker that one
process runs (its signals, logs and exit codes), configured the one way workers are (the
environment), and the supervisor imports neither the worker nor the tasks, let alone torch.

On a host with NVIDIA GPUs, child *i* sees only GPU ``i mod G`` (``CUDA_VISIBLE_DEVICES``), so one
process per GPU (``--processes 0``) gives each process its own device.

A child stops by itself (SIGTERM, its graceful stop) when the supervisor dies, even of SIGKILL or
the OOM killer: Linux's parent-death signal (:func:`stop_with_supervisor`), so no worker runs on
unsupervised, holding a GPU, after its supervisor is gone.

SIGTERM or SIGINT is passed on to every child; the supervisor waits for their graceful stop
(``DUALPLANE_SHUTDOWN_GRACE_S`` plus :data:`STOP_MARGIN_S`, then SIGKILL) and exits with the worst
of their codes. A child that exits while no stop was asked for is started again after a backoff;
a slot whose child keeps dying soon after its start (:data:`CRASH_LOOP_LIMIT` times in a row)
stops the supervisor, which exits 1 (whatever the others it stops exit with) so that its own
supervisor (systemd, Kubernetes) sees it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

from dualplane.common.settings import Settings
from dualplane.ml.device import nvidia_gpu_count

log = logging.getLogger("dualplane.supervisor")

#: A child that ran this long before it exited was not crash-looping: its slot starts afresh.
STABLE_AFTER_S = 60.0
#: Consecutive early exits of one slot after which the supervisor gives up.
CRASH_LOOP_LIMIT = 5
#: The first restart's delay, doubled on each early exit in a row, up to RESTART_BACKOFF_MAX_S.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 15.0
#: Past the shutdown grace, the time a child has to release its work and exit before SIGKILL.
STOP_MARGIN_S = 10.0
#: How often the supervisor looks at its children (a signal wakes it at once).
POLL_S = 0.5
#: The variable that tells a child its supervisor's pid.
SUPERVISOR_PID = "DUALPLANE_SUPERVISOR_PID"
#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def default_processes(environ: Mapping[str, str]) -> int:
    """One worker per GPU the children share out (:func:`gpu_ids`), else one per CPU core."""
    return len(gpu_ids(environ)) or os.cpu_count() or 1


def gpu_ids(environ: Mapping[str, str]) -> list[str]:
    """The GPUs the children share out: those ``CUDA_VISIBLE_DEVICES`` lists, else every NVIDIA GPU."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    return [str(index) for index in range(nvidia_gpu_count())]


def child_environment(environ: Mapping[str, str], settings: Settings, index: int, gpus: list[str]) -> dict[str, str]:
    """The environment of child ``index``: the supervisor's, with its own id, port and GPU."""
    port = settings.worker_port + index if settings.worker_port else 0
    env = dict(environ, DUALPLANE_WORKER_ID=f"{settings.worker_id}-{index}", DUALPLANE_WORKER_PORT=str(port),
               DUALPLANE_WORKER_PROCESSES="1", **{SUPERVISOR_PID: str(os.getpid())})
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def stop_with_supervisor(environ: Mapping[str, str]) -> None:
    """In a supervised child: ask the kernel for SIGTERM when the supervisor dies (Linux only;
    elsewhere a child outlives a killed supervisor), and stop at once if it died already."""
    supervisor = environ.get(SUPERVISOR_PID)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to be stopped with the supervisor: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != int(supervisor):  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Slot:
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    early_exits: int = 0
    start_at: float = 0.0

    def start(self) -> None:
        # its own process group: a terminal's Ctrl-C reaches the supervisor alone, which passes
        # it on once, rather than every child twice
        self.process = subprocess.Popen([sys.executable, "-m", "dualplane", "worker"], env=self.env,
                                        process_group=0)
        self.started_at = time.monotonic()
        log.info("worker %s started (pid %d)", self.env["DUALPLANE_WORKER_ID"], self.process.pid)


class Supervisor:
    """Runs ``count`` worker children until a signal, restarting those that die."""

    def __init__(self, settings: Settings, count: int, environ: Mapping[str, str]) -> None:
        gpus = gpu_ids(environ)
        self.slots = [_Slot(child_environment(environ, settings, index, gpus)) for index in range(count)]
        self.stop_timeout_s = settings.shutdown_grace_s + STOP_MARGIN_S
        self._signal: int | None = None

    def run(self) -> int:
        # the handler only notes the signal; the wake-up pipe ends the wait (a handler must not
        # take a lock the interrupted code may hold)
        wake, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        crash_looped = False
        while self._signal is None and not crash_looped:
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is None:
                    if now >= slot.start_at:
                        slot.start()
                elif slot.process.poll() is not None:
                    crash_looped |= self._restart_later(slot, now)
            if select.select([wake], [], [], POLL_S)[0]:
                os.read(wake, 512)
        worst = self._stop(self._signal or signal.SIGTERM)
        # a crash loop is the supervisor's own failure, reported as 1 whatever the siblings we
        # stopped died of: one still importing when our SIGTERM came ends 143 before its handler exists
        return 1 if crash_looped else worst

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signal = sig

    def _restart_later(self, slot: _Slot, now: float) -> bool:
        """Schedule the restart of a slot whose child exited; True when it crash-loops."""
        assert slot.process is not None
        code, ran_s = slot.process.returncode, now - slot.started_at
        slot.process = None
        slot.early_exits = slot.early_exits + 1 if ran_s < STABLE_AFTER_S else 0
        worker_id = slot.env["DUALPLANE_WORKER_ID"]
        if slot.early_exits >= CRASH_LOOP_LIMIT:
            log.critical("worker %s exited %d times in a row within %g s of its start (last code %d): "
                         "stopping every worker", worker_id, slot.early_exits, STABLE_AFTER_S, code)
            return True
        delay_s = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** max(0, slot.early_exits - 1))
        log.warning("worker %s exited with code %d after %.1f s; restarting it in %.1f s",
                    worker_id, code, ran_s, delay_s)
        slot.start_at = now + delay_s
        return False

    def _stop(self, sig: int) -> int:
        """Pass ``sig`` on, wait for every child's graceful stop; the worst exit code."""
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(sig)
        deadline = time.monotonic() + self.stop_timeout_s
        worst = 0
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within %g s: killed", process.pid, self.stop_timeout_s)
                process.kill()
                process.wait()
            worst = max(worst, _exit_status(process.returncode))
        return worst


def _exit_status(returncode: int) -> int:
    """A child's code as a shell reports it: 128 + the signal that ended it."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(settings: Settings, count: int) -> int:
    """Run ``count`` workers (0: :func:`default_processes`) until a signal or a crash loop."""
    count = count or default_processes(os.environ)
    log.info("supervising %d worker processes", count)
    return Supervisor(settings, count, os.environ).run()
