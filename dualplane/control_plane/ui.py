"""The web UI: static files shipped with the package, served by the control plane.

``/`` is ``ui/index.html``; ``/ui/*`` are its assets (ES modules and CSS, no build step, no
CDN). The page talks to the same API as every other client (bearer token from the sign-in
form, ``/ws`` for live updates), so the UI needs no server-side session or template.

``GET /models`` (authenticated like the rest of the API) lists the model registry names, so
the option forms can offer them for ``model``-like fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from dualplane.control_plane.api_common import current_principal

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dualplane.common.settings import Settings

#: The folder of the UI's files (package data).
UI_DIR = Path(__file__).with_name("ui")
#: Short revalidation: a deployed UI update shows on the next load; ETags make it cheap.
_NO_CACHE = {"Cache-Control": "no-cache"}


def mount_ui(app: FastAPI, settings: Settings) -> None:
    """Serve the UI at ``/`` (and ``/ui/...``) and add ``GET /models``."""
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=_NO_CACHE)

    @app.get("/models", dependencies=[Depends(current_principal)])
    async def models() -> dict[str, Any]:
        """The model registry (names tasks accept for `model`-like params, and their kind)."""
        return {"models": model_entries(settings)}

    app.mount("/ui", _Static(directory=UI_DIR), name="ui")


def model_entries(settings: Settings) -> list[dict[str, str]]:
    """Name and kind of every registry entry (the file a worker reads by default)."""
    from dualplane.data_plane.model_store import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    return [{"name": name, "kind": registry.get(name).kind} for name in registry.names()]


class _Static(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag / Last-Modified) on every load."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response
