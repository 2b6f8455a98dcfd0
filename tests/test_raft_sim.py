"""The deterministic cluster simulation over thousands of seeds (kvstore.raft.simrun).

Each seed runs a randomized scenario (faulty network, partitions, crashes, clients,
membership changes, compaction) with every Raft safety property checked after every
event, then heals and checks liveness. A failure names the seed and the replay command.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.raft.core import Config
from kvstore.raft.simrun import run_seed

ROOT = Path(__file__).resolve().parent.parent
# The default run covers SEEDS_3 + SEEDS_5 seeds; RAFT_SIM_SEEDS scales it (e.g. 10000).
SCALE = int(os.environ.get("RAFT_SIM_SEEDS", "0")) or None
SEEDS_3 = SCALE or 1200
SEEDS_5 = SCALE or 800


def _sweep(nodes: int, seeds: range, cfg: Config | None = None) -> list[str]:
    failures = []
    for seed in seeds:
        res = run_seed(seed, nodes, cfg=cfg)
        if not res.ok:
            failures.append(f"seed {seed} ({nodes} nodes): {res.error}\n    replay: {res.replay()}")
    return failures


@pytest.mark.parametrize("nodes, count", [(3, SEEDS_3), (5, SEEDS_5)])
def test_simulation_seeds(nodes: int, count: int) -> None:
    failures = _sweep(nodes, range(count))
    assert not failures, f"{len(failures)} of {count} seeds failed:\n" + "\n".join(failures[:20])


def test_a_seed_replays_exactly() -> None:
    a, b = io.StringIO(), io.StringIO()
    ra = run_seed(42, 5, verbose=2, out=a)
    rb = run_seed(42, 5, verbose=2, out=b)
    assert ra.ok and rb.ok
    assert a.getvalue() == b.getvalue() and len(a.getvalue().splitlines()) > 1000


def test_the_simulation_does_real_work() -> None:
    """Guard against a simulation that passes because nothing happens."""
    results = [run_seed(s, n) for s in range(40) for n in (3, 5)]
    assert all(r.ok for r in results)
    assert sum(r.elections for r in results) > 150
    assert sum(r.reads_served for r in results) > 200
    assert min(r.max_committed for r in results) > 10


def _first_violation(cfg: Config, nodes: int, limit: int) -> int | None:
    for seed in range(limit):
        if not run_seed(seed, nodes, cfg=cfg).ok:
            return seed
    return None


def test_simulation_catches_a_broken_commit_rule() -> None:
    """Counting replicas of older-term entries (the Figure 8 bug) must be caught."""
    cfg = Config(id="", _unsafe_commit_any_term=True)
    assert _first_violation(cfg, 5, 300) is not None


def test_simulation_catches_double_voting() -> None:
    cfg = Config(id="", _unsafe_vote_twice=True)
    assert _first_violation(cfg, 3, 100) is not None


def test_replay_script_prints_the_trace() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "raft_sim.py"), "--seed", "7", "--nodes", "3", "-v"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "becomes leader" in out.stdout and "seed 7 nodes 3: ok" in out.stdout
