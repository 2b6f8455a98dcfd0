#!/usr/bin/env bash
# Create ./.venv (when missing or stale) and install kvstore with its test tools.
# Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "kvstore needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.kvstore-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing kvstore and its dependencies into .venv (first run takes a minute)"
    log=.venv/install.log
    # pip's warnings are noise when it works; the whole log is shown when it does not.
    if ! { .venv/bin/python -m pip install -q --upgrade pip \
           && .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "installing into .venv failed (log above, also in $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
