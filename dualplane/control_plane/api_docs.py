"""``/docs`` and ``/redoc``: the API reference, served from assets installed with the package;
and the schemas of the bodies the routes read themselves (:func:`document_bodies`).

FastAPI's default pages load Swagger UI and ReDoc from a CDN, so they are blank offline (and on
every air-gapped install). The ``fastapi-offline`` wheel (MIT) ships both bundles (Swagger UI 5,
which reads the OpenAPI 3.1 FastAPI writes); they are mounted under ``/docs-assets`` and the
pages point there. Only the static files are used, not that package's app factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi.openapi.utils
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.staticfiles import StaticFiles

from dualplane.common.models import Graph
from dualplane.control_plane.compose_api import ComposeRequest

ASSETS = "/docs-assets"


def mount_api_docs(app: FastAPI) -> None:
    import fastapi_offline

    app.mount(ASSETS, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} · API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} · API",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)


def document_bodies(app: FastAPI) -> None:
    """The graph routes and /compose read their body themselves (size and depth caps,
    node-scoped errors), so the OpenAPI document gets their schemas here: the Graph schema and
    its example from the shared JSON Schema, and ComposeRequest's from its model."""
    # no `$ref` params in the example: OpenAPI tools read any "$ref" key as a JSON reference
    example = {"nodes": [{"id": "beat", "task": "noop", "plane": "python", "params": {"value": "hello"}},
                         {"id": "join", "task": "collect", "plane": "control", "needs": ["beat"]}]}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = fastapi.openapi.utils.get_openapi(title=app.title, version=app.version,
                                                       description=app.description, routes=app.routes)
            graph = Graph.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in graph.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["Graph"] = {**graph, "examples": [example]}
            _add_component(components, ComposeRequest)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_component(components: dict[str, Any], model: type[BaseModel]) -> None:
    definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in definition.pop("$defs", {}).items():
        components.setdefault(name, nested)
    components[model.__name__] = definition
