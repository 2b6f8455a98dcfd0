#!/usr/bin/env python3
"""Run the deterministic Raft simulation over many seeds, or replay one.

    scripts/raft_sim.py --seeds 10000 --start 0 --nodes 3 -j 2   # a sweep on two cores
    scripts/raft_sim.py --seed 1234 --nodes 5 -v                 # replay one seed with its trace
    scripts/raft_sim.py --seed 1234 -vv                          # ... and every message
    scripts/raft_sim.py --seeds 200 --unsafe-commit              # watch the checks catch a bug

Exit code 1 when any seed breaks a safety or liveness check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kvstore.raft.core import Config  # noqa: E402
from kvstore.raft.simrun import SimResult, run_seed  # noqa: E402


def _run(job: tuple[int, int, int, Config, int]) -> SimResult:
    seed, nodes, ticks, cfg, verbose = job
    return run_seed(seed, nodes, ticks=ticks, cfg=cfg, verbose=verbose)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="run (replay) this one seed")
    ap.add_argument("--seeds", type=int, default=1000, help="how many seeds to sweep")
    ap.add_argument("--start", type=int, default=0, help="first seed of the sweep")
    ap.add_argument("--nodes", type=int, choices=[3, 5], action="append", help="cluster size (repeatable)")
    ap.add_argument("--ticks", type=int, default=100, help="ticks of chaos per seed")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="processes for a sweep")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="-v trace events, -vv every message")
    ap.add_argument("--unsafe-commit", action="store_true", help="sabotage the commit rule (demo)")
    ap.add_argument("--unsafe-vote", action="store_true", help="sabotage vote persistence (demo)")
    ap.add_argument("--unsafe-count", action="store_true",
                    help="sabotage: a leader counts its own entries before writing them (demo)")
    args = ap.parse_args()
    sizes = args.nodes or [3, 5]
    cfg = Config(id="", _unsafe_commit_any_term=args.unsafe_commit, _unsafe_vote_twice=args.unsafe_vote,
                 _unsafe_count_unpersisted=args.unsafe_count)
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    jobs = [(seed, n, args.ticks, cfg, args.verbose) for n in sizes for seed in seeds]
    one = args.seed is not None
    started = time.perf_counter()
    failures = 0
    if args.jobs > 1 and not one and not args.verbose:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = pool.map(_run, jobs, chunksize=16)
            failures = _report(results, one)
    else:
        failures = _report(map(_run, jobs), one or bool(args.verbose))
    took = time.perf_counter() - started
    print(f"{len(jobs)} runs, {failures} failed, {took:.1f} s ({took / max(len(jobs), 1) * 1000:.1f} ms/run)")
    return 1 if failures else 0


def _report(results, each: bool) -> int:
    failures = 0
    for res in results:
        if each:
            print(
                f"seed {res.seed} nodes {res.nodes}: {'ok' if res.ok else 'FAILED'} elections={res.elections} "
                f"committed={res.max_committed} reads={res.reads_served} ticks={res.ticks} "
                f"({res.seconds * 1000:.0f} ms)"
            )
        if not res.ok:
            failures += 1
            print(f"FAIL seed {res.seed} nodes {res.nodes}: {res.error}\n  replay: {res.replay()}", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
