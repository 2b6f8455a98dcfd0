#!/usr/bin/env bash
# The README's test command: set up .venv, then lint, type-check and run the whole suite.
# In CI (CI=true, root) it also installs the Debian tools some tests use
# (redis-tools, redis-server, iproute2, chromium); elsewhere those tests skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=""
    command -v redis-cli >/dev/null || need="$need redis-tools"
    command -v redis-server >/dev/null || need="$need redis-server"
    command -v ip >/dev/null || need="$need iproute2"
    command -v tc >/dev/null || need="$need iproute2"
    command -v chromium >/dev/null || need="$need chromium"
    if [ -n "$need" ]; then
        echo "==> CI: apt-get install$need"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) \
            || echo "warning: could not install$need; the tests that need them will skip"
    fi
fi
echo "==> ruff"
.venv/bin/ruff check kvstore tests scripts
echo "==> mypy"
.venv/bin/mypy kvstore
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
