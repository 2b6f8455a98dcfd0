"""The command line of the contract, driven as a user would: a subprocess per command,
real exit codes (0 ok, 1 absent, 2 usage, 3 unavailable, 4 other) and real output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from clusterutil import kv, leftovers, wait_until


def test_the_whole_cli(tmp_path: Path) -> None:
    d = tmp_path / "home"
    try:
        r = kv(d, "cluster", "up", timeout=120)
        assert r.returncode == 0, r.stderr
        assert "leader" in r.stdout and "cluster down" in r.stdout
        r = kv(d, "cluster", "up", timeout=120)  # twice is safe
        assert r.returncode == 0 and "already up" in r.stdout

        st = json.loads(kv(d, "cluster", "status", "--json", check=True).stdout)
        assert st["leader"] in ("n1", "n2", "n3")
        for n in st["nodes"]:
            for field in ("name", "pid", "alive", "role", "term", "commit_index", "applied_index", "socket",
                          "grpc", "metrics"):
                assert field in n, field
            assert os.path.isabs(n["socket"]) and stat.S_IMODE(os.stat(n["socket"]).st_mode) == 0o600
        grpc_of = {n["name"]: n["grpc"] for n in st["nodes"]}

        assert kv(d, "put", "greeting", "hello world").stdout.strip() == "OK"
        r = kv(d, "get", "greeting")
        assert (r.returncode, r.stdout) == (0, "hello world\n")
        r = kv(d, "get", "nothing-here")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not found" in r.stderr
        assert kv(d, "put", "a/1", "x", "--node", "n2").returncode == 0
        assert kv(d, "put", "a/2", "y", "--socket", str(d / "n3" / "kv.sock")).returncode == 0
        assert kv(d, "put", "b/1", "z", "--endpoint", grpc_of["n1"]).returncode == 0
        assert kv(d, "get", "a/2", "--endpoint", grpc_of["n2"], "--consistency", "local").stdout == "y\n"
        assert kv(d, "get", "b/1", "--node", "n3", "--consistency", "local").stdout == "z\n"
        r = kv(d, "scan", "a/")
        assert r.returncode == 0 and r.stdout == "a/1\tx\na/2\ty\n"
        assert kv(d, "scan", "--limit", "2").stdout.count("\n") == 2
        assert kv(d, "scan", "b/", "--endpoint", grpc_of["n3"]).stdout == "b/1\tz\n"
        assert kv(d, "delete", "a/1").returncode == 0
        assert kv(d, "delete", "a/1").returncode == 1
        assert kv(d, "get", "a/1").returncode == 1

        # usage errors: exit 2, one line, no traceback
        for args in (["get"], ["put", "k"], ["get", "k", "--node", "n9"], ["get", "k", "--consistency", "bogus"],
                     ["get", "k", "--node", "n1", "--socket", "/x"], ["cluster", "kill", "n9"], ["bogus"]):
            r = kv(d, *args)
            assert r.returncode == 2, (args, r.returncode, r.stderr)
            assert "Traceback" not in r.stderr
        r = kv(d, "put", "k" * 600, "v")  # over the key limit: a clear error, not a crash
        assert r.returncode == 4 and "511" in r.stderr and "Traceback" not in r.stderr

        # one node at a time: kill, pause, resume, stop, start
        ld = st["leader"]
        f = next(n for n in ("n1", "n2", "n3") if n != ld)
        assert kv(d, "cluster", "kill", f).returncode == 0
        row = next(n for n in json.loads(kv(d, "cluster", "status", "--json").stdout)["nodes"] if n["name"] == f)
        assert row["role"] == "down" and row["alive"] is False
        assert kv(d, "put", "while-down", "1").returncode == 0  # any live node takes it
        assert kv(d, "cluster", "start", f).returncode == 0
        wait_until(lambda: kv(d, "get", "while-down", "--node", f).stdout == "1\n", what="the node back")
        assert kv(d, "cluster", "pause", f).returncode == 0
        row = next(n for n in json.loads(kv(d, "cluster", "status", "--json").stdout)["nodes"] if n["name"] == f)
        assert row["paused"] is True
        assert kv(d, "cluster", "resume", f).returncode == 0
        assert kv(d, "cluster", "stop", f).returncode == 0
        assert kv(d, "cluster", "stop", f).returncode == 2  # not running
        assert kv(d, "cluster", "start", f).returncode == 0

        r = kv(d, "cluster", "down", timeout=60)
        assert r.returncode == 0 and "stopped" in r.stdout
        # nothing answers now: unavailable (3)
        r = kv(d, "get", "greeting")
        assert r.returncode == 3 and "Traceback" not in r.stderr
        r = kv(d, "get", "greeting", "--socket", str(d / "n1" / "kv.sock"))
        assert r.returncode == 3, r.stderr
    finally:
        kv(d, "cluster", "down", timeout=60)
        assert not leftovers(d, ["n1", "n2", "n3"])


def test_no_cluster_and_help(tmp_path: Path) -> None:
    r = kv(tmp_path, "cluster", "status")
    assert r.returncode == 2 and "cluster up" in r.stderr
    r = kv(tmp_path, "get", "x")
    assert r.returncode == 2
    r = kv(tmp_path, "--help")
    assert r.returncode == 0 and "cluster up" in r.stdout
    for cmd in (["cluster", "up"], ["get"], ["drill", "run"], ["bench", "ipc"], ["node", "run"], ["certs", "init"]):
        r = kv(tmp_path, *cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, cmd
    r = kv(tmp_path, "drill", "list")
    assert r.returncode == 0 and "kill-leader" in r.stdout
