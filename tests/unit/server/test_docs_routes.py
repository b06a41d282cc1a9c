"""The OpenAPI document is valid and names every route the server has. (That the server serves it and
the routes answer as it says: ``tests/server/test_docs_routes.py``.)"""

from __future__ import annotations

from openapi_spec_validator import validate
from starlette.routing import Route

from server.app import create_app
from server.docs_routes import openapi_document
from server.settings import Settings

METHODS = {"get", "post", "put", "patch", "delete"}


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_openapi_document_names_every_route() -> None:
    app = create_app(Settings())
    served = {(method, route.path) for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items()
                  for method in item if method in METHODS}
    assert documented == served
