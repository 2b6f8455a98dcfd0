"""Seeing inside a running cluster: Prometheus metrics, status --watch, logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from clusterutil import client, kv, leader, running_cluster, status, wait_until


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):  # prometheus-client's own parser
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_metrics_parse_and_move(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        ld = leader(d)
        row = next(r for r in status(d)["nodes"] if r["name"] == ld)
        url = row["metrics"]
        assert url.startswith("http://") and url.endswith("/metrics")
        before = scrape(url)
        assert value(before, "kvstore_raft_role", role="leader") == 1
        assert value(before, "kvstore_raft_term") >= 1
        c = client(d, ld)
        for i in range(20):
            c.set(f"m{i}", "x")
            c.get(f"m{i}")
        after = scrape(url)
        assert value(after, "kvstore_requests_total", command="set", outcome="ok") >= \
            value(before, "kvstore_requests_total", command="set", outcome="ok") + 20
        assert value(after, "kvstore_requests_total", command="read_barrier", outcome="ok") >= 20
        assert value(after, "kvstore_raft_commit_index") > value(before, "kvstore_raft_commit_index")
        assert value(after, "kvstore_raft_fsync_seconds_count") > value(before, "kvstore_raft_fsync_seconds_count")
        assert value(after, "kvstore_cache_hits_total") + value(after, "kvstore_cache_misses_total") > 0
        assert value(after, "kvstore_connected_clients") >= 1


def test_status_watch_renders_and_stops_on_sigint(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        p = subprocess.Popen([sys.executable, "-m", "kvstore", "--dir", str(d), "cluster", "status", "--watch",
                              "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "120"})
        lines: list[str] = []

        def read() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        try:
            # a few refreshes: wait until the table has been drawn more than once
            wait_until(lambda: sum("leader:" in x for x in lines) >= 3, timeout=30, what="refreshes")
            p.send_signal(signal.SIGINT)
            p.wait(timeout=15)
            err = p.stderr.read() if p.stderr else ""
        finally:
            if p.poll() is None:
                p.kill()
        t.join(5)
        out = "".join(lines)
        assert p.returncode == 0, err
        assert all(n in out for n in ("n1", "n2", "n3"))
        assert "Traceback" not in err


def test_status_watch_count_and_logs(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as d:
        r = kv(d, "cluster", "status", "--watch", "--interval", "0.1", "--count", "3", check=True)
        assert "writes/s" in r.stdout
        r = kv(d, "cluster", "logs", "--lines", "5", check=True)
        assert "n1: " in r.stdout and "n3: " in r.stdout
        r = kv(d, "cluster", "logs", "n2", check=True)
        assert "n2:" in r.stdout or "role" in r.stdout


def test_json_logs_from_the_config(tmp_path: Path) -> None:
    import dataclasses
    import json

    from kvstore.config import ClusterConfig

    def json_logs(cfg: ClusterConfig) -> ClusterConfig:
        return dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, format="json"))

    with running_cluster(tmp_path, edit=json_logs) as d:
        leader(d)
        lines = [ln for ln in (d / "n1" / "node.log").read_text().splitlines() if ln.strip()]
        events = [json.loads(ln) for ln in lines]
        assert events and all({"ts", "level", "node", "msg"} <= e.keys() for e in events)
        assert any("term" in e["msg"] for e in events)
