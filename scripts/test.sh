#!/bin/sh
# Install the package with its test extras into .venv and run the checks: ruff, mypy, pytest.
# The integration tests need a real redis-server: TEST_REDIS_URL when set, else the tests start a
# private one on a free port (installed here from Debian's packages when it is missing). The client
# tests need newman and Chromium: scripts/install_client_tools.sh installs what is missing.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
if [ -z "${TEST_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is missing: installing the Debian package" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q redis-server
fi
scripts/install_client_tools.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
