"""The client tools some tests drive: newman (npm) and Chromium (through Playwright, a test extra).

``scripts/install_client_tools.sh`` installs them: newman, the AsyncAPI specification schemas and
``ws`` (the WebSocket of the JavaScript client's tests on a Node without one, such as Debian 12's Node
18) into ``.ci/node`` (from ``.ci/node/package-lock.json``), Node and Chromium from Debian's packages.
A missing tool fails the test that needs it, with the command that installs it: these tests are never
skipped.

Node is ``node`` on the PATH, for newman (``#!/usr/bin/env node``) as for the JavaScript client's
tests: to run them on another Node, put the directory that holds its ``node`` first on the PATH
(``PATH=/opt/node18/bin:$PATH scripts/test.sh clients``).

A test that drives one must be marked ``clients`` (``pytestmark = pytest.mark.clients``): only
``scripts/test.sh clients`` runs those, the other stages need no Node and no Chromium. Reaching for a
tool from an unmarked test fails it (``tests/conftest.py`` tells this module which test is running).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.schemas import ROOT

NODE_DIR = ROOT / ".ci" / "node"
INSTALL = "scripts/install_client_tools.sh"
#: Whether the running test is marked ``clients`` (set around each test by tests/conftest.py).
clients_test = False


def _only_in_clients_tests(tool: str) -> None:
    if not clients_test:
        raise RuntimeError(f"a test that drives {tool} must be marked clients (pytestmark = pytest.mark.clients): "
                           "scripts/test.sh clients runs it")


def node_tool(name: str) -> str:
    """``.ci/node/node_modules/.bin/<name>``, else ``<name>`` on the PATH."""
    _only_in_clients_tests(name)
    local = NODE_DIR / "node_modules" / ".bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run {INSTALL}")
    return found


def node_package_file(package: str, path: str) -> Path:
    _only_in_clients_tests(f"the npm package {package}")
    found = NODE_DIR / "node_modules" / package / path
    if not found.exists():
        raise RuntimeError(f"the npm package {package} is not installed in {NODE_DIR}: run {INSTALL}")
    return found


def chromium() -> str:
    """``CHROMIUM`` when set, else ``chromium`` or ``chromium-browser`` on the PATH."""
    _only_in_clients_tests("Chromium")
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(f"Chromium is not installed: run {INSTALL} (Debian: apt-get install chromium)")
    return found
