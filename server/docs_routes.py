"""What the server shows people rather than programs: the browser page and the API documents.

    GET /              the chat page (``server/static/index.html``; ``/?sid=ROOM&role=A`` joins at once)
    GET /static/...    its script and style sheet
    GET /client/chat-relay.js  the JavaScript client (``client/js/chat-relay.js``), which the page imports
    GET /openapi.json  ``protocol/openapi.yaml`` with the envelope schemas of ``protocol/asyncapi.yaml``
                       bundled in, so the served document stands alone

The documents are read once, when the routes are made.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
CLIENT_JS = Path(__file__).resolve().parents[1] / "client" / "js" / "chat-relay.js"
ASYNCAPI_REF = "asyncapi.yaml#/components/schemas/"


def docs_routes() -> list[BaseRoute]:
    openapi = orjson.dumps(openapi_document())

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def openapi_json(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    async def client_js(request: Request) -> Response:
        return FileResponse(CLIENT_JS, media_type="text/javascript; charset=utf-8")

    return [
        Route("/", page, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/client/chat-relay.js", client_js, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def load_document(name: str) -> dict[str, Any]:
    """``protocol/<name>``, parsed."""
    document = yaml.safe_load(files("protocol").joinpath(name).read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"protocol/{name} is not a YAML mapping")
    return document


def openapi_document() -> dict[str, Any]:
    return bundle(load_document("openapi.yaml"), load_document("asyncapi.yaml"))


def bundle(openapi: dict[str, Any], asyncapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with its references into ``asyncapi.yaml`` made local: the AsyncAPI document's
    schemas are copied into ``components.schemas`` (their own references are already local)."""
    document: dict[str, Any] = _local_refs(openapi)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    shared: dict[str, Any] = asyncapi["components"]["schemas"]
    if clash := shared.keys() & schemas.keys():
        raise ValueError(f"schemas named in both documents: {sorted(clash)}")
    schemas.update(shared)
    return document


def _local_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: ("#/components/schemas/" + value.removeprefix(ASYNCAPI_REF)
                      if key == "$ref" and isinstance(value, str) and value.startswith(ASYNCAPI_REF)
                      else _local_refs(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_local_refs(item) for item in node]
    return node
