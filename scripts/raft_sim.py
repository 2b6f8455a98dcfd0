#!/usr/bin/env python3
"""Run the deterministic Raft simulation over many seeds, or replay one.

    scripts/raft_sim.py --seeds 10000 --start 0 --nodes 3     # a sweep
    scripts/raft_sim.py --seed 1234 --nodes 5 -v              # replay one seed with its trace
    scripts/raft_sim.py --seed 1234 -vv                       # ... and every message

Exit code 1 when any seed breaks a safety or liveness check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kvstore.raft.core import Config  # noqa: E402
from kvstore.raft.simrun import run_seed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="run (replay) this one seed")
    ap.add_argument("--seeds", type=int, default=1000, help="how many seeds to sweep")
    ap.add_argument("--start", type=int, default=0, help="first seed of the sweep")
    ap.add_argument("--nodes", type=int, choices=[3, 5], action="append", help="cluster size (repeatable)")
    ap.add_argument("--ticks", type=int, default=100, help="ticks of chaos per seed")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="-v trace events, -vv every message")
    ap.add_argument("--unsafe-commit", action="store_true", help="sabotage the commit rule (demo)")
    ap.add_argument("--unsafe-vote", action="store_true", help="sabotage vote persistence (demo)")
    args = ap.parse_args()
    sizes = args.nodes or [3, 5]
    cfg = Config(id="", _unsafe_commit_any_term=args.unsafe_commit, _unsafe_vote_twice=args.unsafe_vote)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    failures = 0
    runs = 0
    started = time.perf_counter()
    for n in sizes:
        for seed in seeds:
            res = run_seed(seed, n, ticks=args.ticks, cfg=cfg, verbose=args.verbose)
            runs += 1
            if args.seed is not None or args.verbose:
                print(
                    f"seed {seed} nodes {n}: {'ok' if res.ok else 'FAILED'} elections={res.elections} "
                    f"committed={res.max_committed} reads={res.reads_served} ticks={res.ticks} "
                    f"({res.seconds * 1000:.0f} ms)"
                )
            if not res.ok:
                failures += 1
                print(f"FAIL seed {seed} nodes {n}: {res.error}\n  replay: {res.replay()}", flush=True)
    took = time.perf_counter() - started
    print(f"{runs} runs, {failures} failed, {took:.1f} s ({took / max(runs, 1) * 1000:.1f} ms/run)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
