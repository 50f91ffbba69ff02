"""The web UI: static files shipped with the package, served by the control plane.

``/`` is ``ui/index.html``; ``/ui/*`` are its assets (ES modules and CSS, no build step, no
CDN), and ``/ui/statuses.js`` the status sets written from :mod:`dualplane.common.statuses`, so
the page never spells them itself. The page talks to the same API as every other client (bearer token from the sign-in
form, ``/ws`` for live updates), so the UI needs no server-side session or template; its option
forms read ``GET /tasks`` and ``GET /models`` (``routes_catalog``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from dualplane.common.statuses import FINISHED, TERMINAL

if TYPE_CHECKING:
    from fastapi import FastAPI

#: The folder of the UI's files (package data).
UI_DIR = Path(__file__).with_name("ui")
#: Short revalidation: a deployed UI update shows on the next load; ETags make it cheap.
_NO_CACHE = {"Cache-Control": "no-cache"}


def mount_ui(app: FastAPI) -> None:
    """Serve the UI at ``/`` (and ``/ui/...``)."""
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=_NO_CACHE)

    @app.get("/ui/statuses.js", include_in_schema=False)  # before the mount, which would 404 it
    async def statuses() -> Response:
        return Response(STATUSES_JS, media_type="text/javascript", headers=_NO_CACHE)

    app.mount("/ui", _Static(directory=UI_DIR), name="ui")


#: The ES module of the status sets: job statuses that end a job, node statuses that end a node.
STATUSES_JS = (f"export const FINISHED = new Set({json.dumps(sorted(FINISHED))});\n"
               f"export const TERMINAL = new Set({json.dumps(sorted(TERMINAL))});\n")


class _Static(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag / Last-Modified) on every load."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response
