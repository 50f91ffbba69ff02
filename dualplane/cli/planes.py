"""`dualplane control-plane`, `worker`, `reconcile` and `models`: one plane (or tool) in this process.

This is the composition root: the task catalog is built here (:func:`dualplane.tasks.default_registry`)
and handed to the plane, which does not choose its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from dualplane.common.settings import Settings


def configure_logging(level: str) -> None:
    """JSON lines with the bound ids (job, node, request, plane, worker); text on a terminal."""
    from dualplane.common import logs

    logs.configure(level)


def cmd_control_plane(args: argparse.Namespace) -> int:
    """Serve the control plane; uvicorn turns SIGTERM/SIGINT into a graceful lifespan stop."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from dualplane.control_plane.app import create_app
    from dualplane.control_plane.policy import PolicyError
    from dualplane.control_plane.service import ControlPlane
    from dualplane.tasks import default_registry

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        plane = ControlPlane(settings, registry=default_registry(), metrics_registry=CollectorRegistry())
        app = create_app(settings, plane=plane)
    except PolicyError as exc:  # a content policy that cannot be used: say what is wrong, do not serve
        logging.getLogger("dualplane.control").critical("%s", exc)
        return 2
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.control_host, port=settings.control_port,
        ws="websockets-sansio", ws_per_message_deflate=False, timeout_graceful_shutdown=10,
        log_level=settings.log_level.lower(), forwarded_allow_ips=settings.forwarded_allow_ips,
        access_log=settings.access_log, log_config=None,  # logs.configure's handler: uvicorn's lines as JSON too
    ))  # fmt: skip
    control = app.state.control

    async def serve() -> None:
        async def exit_when_failed() -> None:
            await control.failed.wait()
            server.should_exit = True  # a supervisor starts a fresh process

        # the app starts and stops only a plane it built itself; this one is ours (it carries our catalog)
        await control.start()
        watch = asyncio.create_task(exit_when_failed())
        try:
            await server.serve()
        finally:
            watch.cancel()
            await control.stop(settings.shutdown_grace_s)

    run_async(serve())
    return 1 if control.failed.is_set() else 0


def cmd_models(args: argparse.Namespace) -> int:
    """`dualplane models make-tiny ...` (torch needed) and `dualplane models pull NAME ...`."""
    from dualplane.cli.models import main_models
    from dualplane.devstack.local_stack import client_settings

    return int(main_models(args.rest, client_settings(Settings())) or 0)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker until SIGTERM/SIGINT (the worker installs its own handlers), or with
    ``--processes`` other than 1 a supervisor of that many (:mod:`dualplane.cli.supervisor`)."""
    settings = Settings()
    configure_logging(settings.log_level)
    processes = settings.worker_processes if args.processes is None else args.processes
    if processes != 1:
        from dualplane.cli.supervisor import supervise

        return supervise(settings, processes)

    from dualplane.cli.supervisor import stop_with_supervisor

    stop_with_supervisor(os.environ)
    from dualplane.common.errors import PlaneFailed
    from dualplane.data_plane.worker import Worker
    from dualplane.tasks import default_registry

    try:
        run_async(Worker(settings, registry=default_registry()).run())
    except PlaneFailed as exc:
        logging.getLogger("dualplane.worker").critical("%s; exiting so that a supervisor restarts it", exc)
        return 1
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One reconciler pass (the control plane runs one every DUALPLANE_RECONCILE_INTERVAL_S)."""
    from dualplane.common.bridge import Bridge
    from dualplane.control_plane.reconciler import Reconciler
    from dualplane.devstack.local_stack import client_settings

    settings = client_settings(Settings())
    configure_logging(settings.log_level)

    async def once() -> Any:
        async with Bridge(settings.bridge_config()) as bridge:
            reconciler = Reconciler(bridge, interval_s=0, marker_expected=True)
            return await reconciler.run_once(repair=not args.dry_run)

    report = asyncio.run(once())
    verb = "would hand on" if args.dry_run else "handed on"
    print(f"{report.scanned} unfinished jobs checked; {verb} {len(report.requeued)} whose message was lost"
          + (": " + ", ".join(report.requeued) if report.requeued else ""))
    if report.lost_data:
        print("Redis had lost its data (instance marker missing): jobs it held are gone")
    return 0


def run_async(coroutine: Any) -> Any:
    """Run on uvloop where it is installed (a third less loop overhead on the dispatch
    path), on the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
