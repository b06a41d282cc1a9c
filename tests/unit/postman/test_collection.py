"""The Postman collection holds a request for every HTTP route. (That it passes against a live server,
under newman: ``tests/postman/test_collection.py``.)"""

from __future__ import annotations

import json
from typing import Any

from tests.support.schemas import ROOT

COLLECTION = ROOT / "postman" / "chat-relay.postman_collection.json"


def collection() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COLLECTION.read_text(encoding="utf-8"))
    return loaded


def test_every_http_route_is_in_the_collection() -> None:
    assert collection()["info"]["schema"].endswith("/v2.1.0/collection.json")
    routes = {(item["request"]["method"], "/" + "/".join(item["request"]["url"]["path"]))
              for folder in collection()["item"] for item in folder["item"]}
    assert routes >= {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/v1/session"),
                      ("POST", "/api/chat/{{room}}/messages"), ("GET", "/api/chat/history/{{room}}"),
                      ("GET", "/api/chat/history/{{room}}/export"), ("DELETE", "/api/chat/history/{{room}}"),
                      ("GET", "/openapi.json"), ("GET", "/"), ("GET", "/api/chat/{{room}}/usage")}
