"""The local protocol against real clients: redis-py (RESP2 and RESP3), redis-cli, redis-benchmark.

One server per module, on a tmp UNIX socket, over a real LMDB Store and ShmCache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis

from kvstore.local.single import SingleNodeBackend
from kvstore.local.testing import ServerThread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    d = tmp_path_factory.mktemp("resp")
    cache = f"/kvs-t-{uuid.uuid4().hex[:12]}"
    st = ServerThread(lambda: SingleNodeBackend.open(str(d / "data"), cache_name=cache, sync=False))
    with st:
        yield st
    assert not os.path.exists(st.path)
    assert not os.path.exists("/dev/shm" + cache)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def r(request: pytest.FixtureRequest, server: ServerThread) -> Iterator[redis.Redis]:
    c = redis.Redis(unix_socket_path=server.path, protocol=request.param, socket_timeout=10)
    yield c
    c.close()


def k(name: str) -> str:
    return f"{name}:{uuid.uuid4().hex[:8]}"


def test_ping_echo(r: redis.Redis) -> None:
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    assert r.execute_command("PING", "x") is False  # redis-py compares the reply with PONG


def test_set_get_options(r: redis.Redis) -> None:
    a = k("a")
    assert r.get(a) is None
    assert r.set(a, "1") is True
    assert r.get(a) == b"1"
    assert r.set(a, "2", nx=True) is None  # NX on an existing key: not applied
    assert r.set(a, "2", xx=True) is True
    assert r.get(a) == b"2"
    assert r.set(a, "3", get=True) == b"2"  # atomic swap
    assert r.set(a, "4", nx=True, get=True) == b"3"  # GET answers the old value even when NX says no
    assert r.get(a) == b"3"
    b = k("b")
    assert r.set(b, "x", xx=True) is None
    assert r.get(b) is None
    assert r.set(b, "y", nx=True) is True
    assert r.set(b, b"\x00\xff binary \r\n", get=True) == b"y"
    assert r.get(b) == b"\x00\xff binary \r\n"
    with pytest.raises(redis.ResponseError, match="not supported"):
        r.set(a, "1", ex=5)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", a, "1", "BOGUS")
    assert r.get(a) == b"3"


def test_mget_mset_exists_del(r: redis.Redis) -> None:
    ks = [k("m") for _ in range(5)]
    assert r.mset({ks[0]: "0", ks[1]: "1", ks[2]: "2"}) is True
    assert r.mget(ks) == [b"0", b"1", b"2", None, None]
    assert r.exists(*ks) == 3
    assert r.exists(ks[0], ks[0]) == 2  # Redis counts repeats
    assert r.delete(ks[0], ks[1], ks[3]) == 2
    assert r.delete(ks[0]) == 0
    assert r.exists(*ks) == 1
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", ks[0], "1", ks[1])


def test_dbsize_and_scan(r: redis.Redis) -> None:
    prefix = k("scan")
    keys = {f"{prefix}:{i:05d}".encode() for i in range(1200)}
    p = r.pipeline(transaction=False)
    for key in keys:
        p.set(key, "v")
    p.execute()
    assert r.dbsize() >= 1200
    # Every key exactly once, whatever COUNT; the cursor is an integer redis-py can parse.
    for count in (7, 100, 1000):
        seen: list[bytes] = []
        cursor = 0
        while True:
            cursor, batch = r.scan(cursor, match=f"{prefix}:*", count=count)
            seen += batch
            if cursor == 0:
                break
        assert len(seen) == len(set(seen)) == 1200
        assert set(seen) == keys
    assert sorted(r.scan_iter(match=f"{prefix}:0001?")) == sorted(
        f"{prefix}:{i:05d}".encode() for i in range(10, 20)
    )
    assert sorted(r.scan_iter(match=f"{prefix}:0000[1-3]")) == [
        f"{prefix}:{i:05d}".encode() for i in (1, 2, 3)
    ]
    # A full scan without MATCH sees them too, and scans are resumable from any cursor.
    everything = set(r.scan_iter(count=500))
    assert keys <= everything
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan("nope")


def test_readonly_readwrite(r: redis.Redis) -> None:
    a = k("ro")
    r.set(a, "1")
    assert r.readonly() is True
    assert r.get(a) == b"1"  # local reads still see this connection's acknowledged write
    r.set(a, "2")
    assert r.get(a) == b"2"
    assert r.readwrite() is True
    assert r.get(a) == b"2"


def test_info(r: redis.Redis) -> None:
    info = r.info()
    assert info["redis_version"].startswith("7.")
    assert info["process_id"] == os.getpid()
    assert info["connected_clients"] >= 1
    assert info["role"] == "leader"
    assert "db0" in info
    assert set(r.info("replication")) >= {"role", "leader", "term", "commit_index", "applied_index"}
    assert "db0" in r.info("keyspace")
    assert "redis_version" not in r.info("keyspace")


def test_hello(r: redis.Redis, server: ServerThread) -> None:
    c = redis.Redis(unix_socket_path=server.path)
    try:
        hello = c.execute_command("HELLO", "3")
        assert hello[b"proto"] == 3 and hello[b"server"] == b"redis" and hello[b"modules"] == []
        assert set(hello) >= {b"server", b"version", b"proto", b"id", b"mode", b"role", b"modules"}
        flat = c.execute_command("HELLO", "2", "SETNAME", "named")
        assert dict(zip(flat[::2], flat[1::2], strict=True))[b"proto"] == 2
        assert c.client_getname() == "named"
        with pytest.raises(redis.ResponseError, match="NOPROTO"):
            c.execute_command("HELLO", "4")
    finally:
        c.close()
    hello = r.execute_command("HELLO")
    hello = dict(zip(hello[::2], hello[1::2], strict=True)) if isinstance(hello, list) else hello
    assert hello[b"proto"] == r.connection_pool.connection_kwargs.get("protocol", 2)


def test_command(r: redis.Redis) -> None:
    cmds = r.command()
    for name in ("get", "set", "del", "mget", "mset", "scan", "exists", "ping", "info", "hello", "client"):
        assert name in cmds
    assert cmds["get"]["arity"] == 2 and cmds["set"]["arity"] == -3
    assert r.command_count() == len(cmds)
    assert list(r.execute_command("COMMAND", "INFO", "get")) == ["get"]
    docs = r.execute_command("COMMAND", "DOCS")
    assert not docs
    assert r.command_getkeys("MSET", "a", "1", "b", "2") in ([b"a", b"b"], ["a", "b"])


def test_client(r: redis.Redis) -> None:
    cid = r.client_id()
    assert isinstance(cid, int)
    assert r.client_setname("worker-1") is True
    assert r.client_getname() in ("worker-1", b"worker-1")
    me = [c for c in r.client_list() if c["id"] == str(cid)]
    assert me and me[0]["name"] == "worker-1"
    assert "worker-1" in r.client_info()["name"]
    assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x") in (True, b"OK")
    with pytest.raises(redis.ResponseError):
        r.client_setname("bad name")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        r.execute_command("CLIENT", "KILL", "ID", "1")


def test_select_config_quit(r: redis.Redis, server: ServerThread) -> None:
    assert r.execute_command("SELECT", "0") in (True, b"OK")
    with pytest.raises(redis.ResponseError, match="out of range"):
        r.execute_command("SELECT", "1")
    assert r.config_get("save") == {"save": ""}
    assert r.config_get("appendonly") == {"appendonly": "no"}
    assert r.config_get("nosuchparam") == {}
    c = redis.Redis(unix_socket_path=server.path)
    assert c.execute_command("QUIT") in (True, b"OK")
    c.close()


def test_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command 'FOO'"):
        r.execute_command("FOO", "bar")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET", "a", "b")
    assert r.ping()  # the connection is still good


def test_limits_store_nothing(r: redis.Redis) -> None:
    ok = k("lim")
    with pytest.raises(redis.ResponseError, match="key too large"):
        r.set("x" * 512, "v")
    r.set("x" * 511, "v")  # exactly the limit is fine
    assert r.get("x" * 511) == b"v"
    with pytest.raises(redis.ResponseError, match="value too large"):
        r.set(ok, b"v" * ((1 << 20) + 1))
    assert r.get(ok) is None
    r.set(ok, b"v" * (1 << 20))
    assert len(r.get(ok) or b"") == 1 << 20
    with pytest.raises(redis.ResponseError, match="too large"):
        r.mset({k("m1"): "1", ok: b"w" * ((1 << 20) + 1)})
    assert len(r.get(ok) or b"") == 1 << 20
    with pytest.raises(redis.ResponseError, match="key is empty"):
        r.set("", "v")


def test_pipeline_order(r: redis.Redis) -> None:
    a = k("pipe")
    p = r.pipeline(transaction=False)
    for i in range(300):
        p.set(a, str(i))
        p.get(a)
    p.delete(a)
    p.get(a)
    out = p.execute()
    assert out[1::2][:300] == [str(i).encode() for i in range(300)]
    assert out[-2:] == [1, None]


def test_many_connections(server: ServerThread) -> None:
    clients = [redis.Redis(unix_socket_path=server.path) for _ in range(40)]
    try:
        key = k("conn")
        for i, c in enumerate(clients):
            c.set(f"{key}:{i}", i)
        assert [int(c.get(f"{key}:{i}") or 0) for i, c in enumerate(clients)] == list(range(40))
        assert clients[0].info("clients")["connected_clients"] >= 40
    finally:
        for c in clients:
            c.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli(server: ServerThread) -> None:
    def cli(*args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-s", server.path, *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout

    key = k("cli")
    assert cli("PING").strip() == "PONG"
    assert cli("SET", key, "hello world").strip() == "OK"
    assert cli("GET", key).strip() == "hello world"
    assert cli("EXISTS", key).strip() == "1"
    assert key in cli("--no-raw", "SCAN", "0", "MATCH", key, "COUNT", "100000")
    assert "redis_version" in cli("INFO", "server")
    assert "ERR unknown command" in cli("NOSUCH")
    assert cli("--scan", "--pattern", key).strip() == key


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark is not installed")
@pytest.mark.parametrize("pipeline", ["1", "16"])
def test_redis_benchmark(server: ServerThread, pipeline: str) -> None:
    out = subprocess.run(
        ["redis-benchmark", "-s", server.path, "-t", "get,set", "-n", "2000", "-q", "--csv", "-P", pipeline],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {line.split(",")[0].strip('"'): line for line in out.stdout.splitlines()[1:]}
    assert set(rows) == {"SET", "GET"}, out.stdout + out.stderr
    for row in rows.values():
        assert float(row.split(",")[1].strip('"')) > 0
    assert "Could not fetch server CONFIG" not in out.stderr
