"""Short runs of each benchmark in scripts/bench/, so that none of them rots unnoticed.

The real runs take minutes to an hour (see docs/BENCHMARKS.md for their commands); these
use tiny sizes and check that each script runs to the end and reports what it measures,
not how fast anything was (speed lives in the benchmarks, not in tests). The ones driven
by redis-benchmark, or run beside redis-server, skip without them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"

needs_redis = pytest.mark.skipif(
    not (shutil.which("redis-benchmark") and shutil.which("redis-server")),
    reason="needs redis-benchmark and redis-server (Debian: apt-get install redis-tools redis-server)",
)


def run(script: str, *args: str, tmp_path: Path, timeout: float = 180) -> dict[str, Any]:
    """Run scripts/bench/SCRIPT ARGS --json F; return F's contents. On a timeout the
    script gets SIGINT first, so that its own clean-up (stopping the nodes it started)
    runs."""
    out = tmp_path / f"{Path(script).stem}.json"
    cmd = [sys.executable, str(BENCH / script), *args, "--json", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            text, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        pytest.fail(f"{script} took over {timeout:.0f} s:\n{text[-3000:]}")
    assert p.returncode == 0, f"{script} exited {p.returncode}:\n{text[-3000:]}"
    return json.loads(out.read_text())


def test_bench_lmdb_rss_shows_the_map_in_rss(tmp_path: Path) -> None:
    d = run("bench_lmdb_rss.py", "--keys", "20000", "--reads", "0,2000", tmp_path=tmp_path)
    rows = {(r["reads"], r["readahead"]): r for r in d["rows"]}
    assert set(rows) == {(0, True), (0, False), (2000, True), (2000, False)}
    assert d["file_mb"] > 1 and d["depth"] >= 2
    # no reads, nothing of the file mapped; 2,000 random reads of 20,000 keys map most of it
    assert rows[(0, True)]["map_in_rss_mb"] < 0.5
    assert rows[(2000, True)]["share_of_file"] > 0.5


def test_bench_cache(tmp_path: Path) -> None:
    d = run("bench_cache.py", "--runs", "1", "--keys", "1000", "--ops", "5000", "--duration", "0.5",
            tmp_path=tmp_path)
    assert d["benchmark"] == "cache" and d["cache_put_ops_s"] > 0
    assert all(v["median"] > 0 for v in d["single_process"].values())
    assert d["reader_processes"]


def test_bench_failover(tmp_path: Path) -> None:
    d = run("bench_failover.py", "--runs", "1", tmp_path=tmp_path)
    assert len(d["runs_ms"]) == 1 and 0 < d["median_ms"] < 10_000


def test_bench_snapshot_catches_a_wiped_follower_up_by_snapshot(tmp_path: Path) -> None:
    d = run("bench_snapshot.py", "--keys", "5000", "--overwrite-minutes", "0.05", "--snapshot-entries", "5",
            "--get-seconds", "0.5", tmp_path=tmp_path, timeout=240)
    assert d["wiped_installed_snapshot"] is True  # not a replay of the log: it was compacted
    assert d["restart_to_serving_s"] > 0 and d["wiped_catch_up_s"] > 0
    assert d["get_ops_10k"] > 0 and d["get_ops_big"] > 0
    assert d["overwrite_rounds"] >= 1
    assert set(d["lmdb_mb_before_after"]) == {"n1", "n2", "n3"}
    for before, after in d["memory_mb_before_after"].values():
        assert before["VmRSS"] > 0 and after["VmRSS"] >= after["RssAnon"]


@needs_redis
def test_bench_get_scale(tmp_path: Path) -> None:
    d = run("bench_get_scale.py", "--keys", "20000", "--small", "2000", "--runs", "1", "--depths", "1", "-n", "30000",
            tmp_path=tmp_path, timeout=240)
    for server in ("kvstore", "redis"):
        assert d[server]["small"]["1"]["rps"] > 0 and d[server]["big"]["1"]["rps"] > 0
        assert d[server]["ratio"]["1"] > 0
    assert d["kvstore"]["memory_mb"]["VmRSS"] > 0


@needs_redis
def test_bench_resp(tmp_path: Path) -> None:
    d = run("bench_resp.py", "--runs", "1", "--workers", "0", "--loop", "1000", "-n", "10000", tmp_path=tmp_path,
            timeout=240)
    ours = d["median"]["kvstore w=0"]
    assert ours["redis-benchmark SET -P 1"] > 0 and ours["redis-benchmark GET -P 16"] > 0
    assert d["rows"]
