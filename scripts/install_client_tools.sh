#!/bin/sh
# Install the tools the client tests drive, skipping what is already there (safe to run again):
# - Node.js and npm (Debian packages: Node 18 on Debian 12), then into .ci/node, exactly as pinned by
#   .ci/node/package-lock.json, newman, the AsyncAPI specification schemas and ws (the WebSocket the
#   JavaScript client's tests pass it where Node has none of its own, as on Node 18);
# - Chromium (Debian package `chromium`; or set CHROMIUM to a Chrome/Chromium binary) for the
#   browser page's tests, which drive it with Playwright: pip installs that Python package (and the
#   driver bundled in its wheel) with the test extras; no `playwright install`, no browser download.
set -eu
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)

packages=""
command -v npm >/dev/null 2>&1 || packages="$packages nodejs npm"
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    packages="$packages chromium"
fi
if [ -n "$packages" ]; then
    echo "installing the Debian packages:$packages" >&2
    $SUDO apt-get update -q
    # shellcheck disable=SC2086  # one word per package
    $SUDO apt-get install -y -q $packages
fi

installed=.ci/node/node_modules/.package-lock.json
if [ ! -x .ci/node/node_modules/.bin/newman ] || [ ! -d .ci/node/node_modules/@asyncapi/specs ] \
        || [ ! -f .ci/node/node_modules/ws/package.json ] \
        || [ ! -f "$installed" ] || [ .ci/node/package-lock.json -nt "$installed" ]; then
    echo "installing newman, @asyncapi/specs and ws into .ci/node" >&2
    npm ci --prefix .ci/node --no-audit --no-fund --loglevel=error
fi
