#!/usr/bin/env bash
# Long failure drills, outside CI: every scenario (or the ones named), several seeds each,
# a minute or more apiece. Stops at the first drill that fails its checks (exit code 1),
# leaving its history and report in place; a summary line per drill goes to drills.log.
#
#   scripts/drill_long.sh                          # every scenario, 3 seeds, 60 s each
#   DURATION=300 SEEDS="1 2 3 4 5" scripts/drill_long.sh mixed partition-leader
#   NET=netns NODES=5 sudo -E scripts/drill_long.sh bridge majorities-ring
#
# Environment: DURATION (s, default 60), SEEDS (default "1 2 3"), CLIENTS (default 10),
# NODES (default 3), NET (proxy|netns, default proxy), DIR (default ./kvstore-drills).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 2; }
DURATION=${DURATION:-60}
SEEDS=${SEEDS:-"1 2 3"}
CLIENTS=${CLIENTS:-10}
NODES=${NODES:-3}
NET=${NET:-proxy}
DIR=${DIR:-./kvstore-drills}
mkdir -p "$DIR"
LOG="$DIR/drills.log"

if [ "$#" -gt 0 ]; then
    scenarios=("$@")
else
    # every scenario `kvstore drill list` knows, skipping the ones marked unavailable
    mapfile -t scenarios < <("$PY" -c '
from kvstore.drills.scenarios import SCENARIOS
for s in SCENARIOS.values():
    if not s.available():
        print(s.name)')
fi

echo "==> ${#scenarios[@]} scenario(s) x seeds [$SEEDS], ${DURATION}s each, $NODES nodes, $CLIENTS clients, net $NET"
failed=0
for sc in "${scenarios[@]}"; do
    for seed in $SEEDS; do
        echo "==> $sc seed $seed"
        set +e
        out=$("$PY" -m kvstore --dir "$DIR" drill run "$sc" --duration "$DURATION" --seed "$seed" \
              --clients "$CLIENTS" --nodes "$NODES" --net "$NET" --check-budget 120 --json)
        rc=$?
        set -e
        echo "$(date -Is) rc=$rc $out" >> "$LOG"
        if [ -n "$out" ]; then
            "$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
if d.get("skipped"):
    print("    skipped:", d["skipped"])
else:
    print("    ops {ok} ok / {failed} failed / {unknown} unknown".format(**d["ops"]),
          "| linearizable", d["linearizable"], "| lost", d["lost_writes"],
          "| max unavailable %.0f ms" % d["max_unavailable_ms"], "| report", d["report"])' "$out"
        fi
        if [ "$rc" -ne 0 ]; then
            echo "!!! $sc seed $seed failed (exit $rc); see $LOG" >&2
            failed=1
            [ "$rc" -eq 1 ] && exit 1  # a real violation: stop here, keep the evidence
        fi
    done
done
exit $failed
