#!/usr/bin/env bash
# IPC against RPC on this machine, then the local 3-node cluster against its peers
# (redis-server and etcd, when installed). Tables on the terminal; JSON and PNG charts
# in bench-results/ipc/ and bench-results/cluster/. Takes about 5 minutes.
#
#   scripts/bench/bench_ipc.sh                 # both, default durations
#   DURATION=1 scripts/bench/bench_ipc.sh      # shorter runs
#   ONLY=ipc scripts/bench/bench_ipc.sh        # just `kvstore bench ipc` (or ONLY=cluster)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DURATION=${DURATION:-3}
ONLY=${ONLY:-all}

if [[ $ONLY == all || $ONLY == ipc ]]; then
    "$PY" -m kvstore bench ipc --duration "$DURATION" --report bench-results/ipc
fi
if [[ $ONLY == all || $ONLY == cluster ]]; then
    peers=()
    if command -v redis-server >/dev/null || command -v etcd >/dev/null; then
        peers=(--peers)
    fi
    "$PY" -m kvstore bench cluster --duration "$DURATION" "${peers[@]}" --report bench-results/cluster
fi
