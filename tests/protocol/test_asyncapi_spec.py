"""``protocol/asyncapi.yaml`` is a valid AsyncAPI 3 document, by the specification's own JSON schema
(the npm package ``@asyncapi/specs``, installed into ``.ci/node`` by scripts/install_client_tools.sh)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.support.schemas import asyncapi
from tests.support.tools import node_package_file

pytestmark = pytest.mark.clients  # the AsyncAPI schemas from npm: scripts/test.sh clients


def test_the_document_is_valid_asyncapi_3() -> None:
    assert asyncapi()["asyncapi"] == "3.0.0"
    specification = json.loads(node_package_file("@asyncapi/specs", "schemas/3.0.0-without-$id.json").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(specification).iter_errors(asyncapi())]
    assert errors == []
