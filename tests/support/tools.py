"""The client tools some tests drive: newman (npm) and Chromium (through Playwright, a test extra).

``scripts/install_client_tools.sh`` installs them: newman and the AsyncAPI specification schemas
into ``.ci/node`` (from ``.ci/node/package-lock.json``), Chromium from Debian's packages. A missing
tool fails the test that needs it, with the command that installs it: these tests are never skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.schemas import ROOT

NODE_DIR = ROOT / ".ci" / "node"
INSTALL = "scripts/install_client_tools.sh"


def node_tool(name: str) -> str:
    """``.ci/node/node_modules/.bin/<name>``, else ``<name>`` on the PATH."""
    local = NODE_DIR / "node_modules" / ".bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run {INSTALL}")
    return found


def node_package_file(package: str, path: str) -> Path:
    found = NODE_DIR / "node_modules" / package / path
    if not found.exists():
        raise RuntimeError(f"the npm package {package} is not installed in {NODE_DIR}: run {INSTALL}")
    return found


def chromium() -> str:
    """``CHROMIUM`` when set, else ``chromium`` or ``chromium-browser`` on the PATH."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(f"Chromium is not installed: run {INSTALL} (Debian: apt-get install chromium)")
    return found
