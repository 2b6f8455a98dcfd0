#!/usr/bin/env bash
# The README's demo command: set up .venv, start a local 3-node cluster, write and read
# through the CLI, run a short failure drill, and say how to stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export KVSTORE_DIR="${KVSTORE_DIR:-$PWD/kvstore-data}"
kv() {  # echo the command as one would type it, then run it
    local a line='$ kvstore'
    for a in "$@"; do [[ "$a" == *[[:space:]]* ]] && line+=" '$a'" || line+=" $a"; done
    echo "$line"
    .venv/bin/kvstore "$@"
}

echo; echo "==> a local 3-node cluster in $KVSTORE_DIR"
kv cluster up
echo; echo "==> writes and reads through the CLI (any node; writes are forwarded to the leader)"
kv put greeting "hello, world"
kv get greeting
kv put lang python --node n2
kv get lang --node n3
kv get lang --node n3 --consistency local
kv scan
echo; echo "==> a short failure drill"
if .venv/bin/kvstore drill list >/dev/null 2>&1; then
    kv drill run kill-leader --duration 6 --report "$KVSTORE_DIR/reports/kill-leader" || true
else
    leader=$(.venv/bin/kvstore cluster status --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
    kv cluster kill "$leader"
    kv put after-failover "still serving"
    kv get after-failover
    kv cluster status
    kv cluster start "$leader"
fi
echo; echo "==> the cluster"
kv cluster status
echo
echo "The cluster keeps running. Try: .venv/bin/kvstore --dir $KVSTORE_DIR get greeting"
echo "                               redis-cli -s $KVSTORE_DIR/n1/kv.sock GET greeting"
echo "Stop it with:                  .venv/bin/kvstore --dir $KVSTORE_DIR cluster down"
