"""Hostile and odd input: the server answers or closes that one connection with an error,
never crashes or hangs, and keeps serving everyone else with nothing stored lost."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.local.resp import Limits
from kvstore.local.single import SingleNodeBackend
from kvstore.local.testing import ServerThread

DEADLINE = 10.0  # seconds a single exchange may take: beyond it the server "hangs"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SENTINEL = (b"fuzz:sentinel", b"\x00precious\r\nvalue\xff")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    d: Path = tmp_path_factory.mktemp("fuzz")
    cache = f"/kvs-f-{uuid.uuid4().hex[:12]}"
    with ServerThread(lambda: SingleNodeBackend.open(str(d / "data"), cache_name=cache, sync=False)) as st_:
        assert exchange(st_.path, pack(b"SET", *SENTINEL)) == [b"OK"]
        yield st_
        assert_serving(st_)
    assert not os.path.exists(st_.path)
    assert not os.path.exists("/dev/shm" + cache) and not os.path.exists("/dev/shm/sem." + cache[1:])


def pack(*args: bytes) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


def exchange(path: str, *pieces: bytes, shut: bool = True, pause: float = 0.0) -> list[object]:
    """Send the pieces, half-close (so the server sees EOF), read every reply until it closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(DEADLINE)
    s.connect(path)
    reader = hiredis.Reader()
    replies: list[object] = []
    try:
        try:
            for p in pieces:
                s.sendall(p)
                if pause:
                    time.sleep(pause)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already refused this connection; read what it said
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail(f"server did not answer/close within {DEADLINE}s; got {replies[-3:]!r}")
            if not chunk:
                break
            reader.feed(chunk)  # a ProtocolError here would be a malformed reply: a bug
            while (r := reader.gets()) is not False:
                replies.append(r)
    finally:
        s.close()
    return replies


def assert_serving(srv: ServerThread) -> None:
    """Another client gets served, and the stored data is intact."""
    got = exchange(srv.path, pack(b"PING") + pack(b"GET", SENTINEL[0]))
    assert got == [b"PONG", SENTINEL[1]]


def is_protocol_error(r: object) -> bool:
    return isinstance(r, hiredis.ReplyError) and str(r).startswith("ERR Protocol error")


@FUZZ
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=300).map(lambda b: b"*" + b)))
def test_random_bytes(server: ServerThread, data: bytes) -> None:
    exchange(server.path, data)
    assert_serving(server)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=200), where=st.integers(0, 3))
def test_junk_between_valid_requests(server: ServerThread, junk: bytes, where: int) -> None:
    frames = [pack(b"PING"), pack(b"ECHO", b"x"), pack(b"PING")]
    frames.insert(where, junk)
    replies = exchange(server.path, b"".join(frames))
    assert replies[: min(where, 3)] == [b"PONG", b"x", b"PONG"][: min(where, 3)]
    assert_serving(server)


KEYS = [b"a", b"b", b"c"]
op = st.one_of(
    st.tuples(st.just(b"SET"), st.sampled_from(KEYS), st.binary(max_size=40)),
    st.tuples(st.just(b"GET"), st.sampled_from(KEYS)),
    st.tuples(st.just(b"DEL"), st.sampled_from(KEYS)),
    st.tuples(st.just(b"EXISTS"), st.sampled_from(KEYS)),
    st.tuples(st.just(b"MGET"), st.sampled_from(KEYS), st.sampled_from(KEYS)),
    st.tuples(st.just(b"ECHO"), st.binary(max_size=40)),
    st.tuples(st.just(b"PING")),
)


@FUZZ
@given(
    ops=st.lists(op, min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    slow=st.booleans(),
)
def test_split_frames(
    server: ServerThread, ops: list[tuple[bytes, ...]], cuts: list[int], slow: bool
) -> None:
    """A pipeline cut at random points gets exactly the replies a model predicts, in order."""
    ns = uuid.uuid4().hex.encode() + b":"
    model: dict[bytes, bytes] = {}
    expected: list[object] = []
    wire = b""
    for o in ops:
        name, *rest = o
        if name in (b"SET", b"GET", b"DEL", b"EXISTS", b"MGET"):
            keys = [ns + k for k in (rest if name != b"SET" else rest[:1])]
            args = keys + (rest[1:] if name == b"SET" else [])
        else:
            keys, args = [], list(rest)
        wire += pack(name, *args)
        if name == b"SET":
            model[keys[0]] = rest[1]
            expected.append(b"OK")
        elif name == b"GET":
            expected.append(model.get(keys[0]))
        elif name == b"DEL":
            expected.append(int(model.pop(keys[0], None) is not None))
        elif name == b"EXISTS":
            expected.append(int(keys[0] in model))
        elif name == b"MGET":
            expected.append([model.get(k) for k in keys])
        elif name == b"ECHO":
            expected.append(rest[0])
        else:
            expected.append(b"PONG")
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert exchange(server.path, *pieces, pause=0.002 if slow else 0.0) == expected
    assert_serving(server)


@FUZZ
@given(
    n=st.integers(min_value=Limits().max_request + 1, max_value=2**63 - 1),
    kind=st.sampled_from(["bulk", "array"]),
    after=st.sampled_from([b"", pack(b"PING")]),
)
def test_huge_length_headers(server: ServerThread, n: int, kind: str, after: bytes) -> None:
    """Refused at once (no waiting for the bytes, no allocation): an error, then the connection closes."""
    header = b"*1\r\n$%d\r\n" % n if kind == "bulk" else b"*%d\r\n" % n
    replies = exchange(server.path, after + header, shut=False)
    assert replies and is_protocol_error(replies[-1]), replies
    assert replies[:-1] == ([b"PONG"] if after else [])
    assert_serving(server)


def test_huge_array_header_is_refused_before_allocating(server: ServerThread) -> None:
    t = time.monotonic()
    replies = exchange(server.path, pack(b"PING") + b"*500000000\r\n", shut=False)
    assert replies[0] == b"PONG" and is_protocol_error(replies[1])
    assert time.monotonic() - t < 1.0  # hiredis would have allocated (and freed) 4 GB


def test_huge_header_split_across_reads(server: ServerThread) -> None:
    replies = exchange(server.path, b"*2\r\n$3\r\nGET\r\n$99", b"999999999", b"\r\n", shut=False, pause=0.01)
    assert len(replies) == 1 and is_protocol_error(replies[0])


@FUZZ
@given(depth=st.integers(2, 300), tail=st.sampled_from([b"$4\r\nPING\r\n", b"", b"*0\r\n"]))
def test_deep_nesting(server: ServerThread, depth: int, tail: bytes) -> None:
    replies = exchange(server.path, b"*1\r\n" * depth + tail, shut=False)
    assert len(replies) == 1 and is_protocol_error(replies[0]), replies
    assert_serving(server)


@pytest.mark.parametrize(
    "data",
    [
        b"+PING\r\n",
        b":1\r\n",
        b"$4\r\nPING\r\n",
        b"PING\r\n",
        b"-ERR x\r\n",
        b"*1\r\n:1\r\n",
        b"*2\r\n$3\r\nGET\r\n$-1\r\n",
    ],
)
def test_non_array_requests(server: ServerThread, data: bytes) -> None:
    replies = exchange(server.path, pack(b"PING") + data, shut=False)
    assert replies[0] == b"PONG" and len(replies) == 2 and is_protocol_error(replies[1]), replies
    assert_serving(server)


def test_ten_thousand_command_pipeline(server: ServerThread) -> None:
    ns = uuid.uuid4().hex.encode()
    wire = b"".join(pack(b"SET", b"%s:%d" % (ns, i), b"%d" % i) for i in range(10_000))
    wire += b"".join(pack(b"GET", b"%s:%d" % (ns, i)) for i in range(10_000))
    replies = exchange(server.path, wire)
    assert replies[:10_000] == [b"OK"] * 10_000
    assert replies[10_000:] == [b"%d" % i for i in range(10_000)]


def test_limits_store_nothing(server: ServerThread) -> None:
    ns = uuid.uuid4().hex.encode()
    k = ns + b":k"
    replies = exchange(
        server.path,
        pack(b"SET", b"x" * 512, b"v"),
        pack(b"SET", k, b"v" * ((1 << 20) + 1)),
        pack(b"MSET", ns + b":a", b"1", k, b"v" * ((1 << 20) + 1)),
        pack(b"GET", k),
        pack(b"EXISTS", ns + b":a"),
        pack(b"SET", b"", b"v"),
    )
    assert [str(r).split(":")[0] for r in replies[:3]] == ["ERR key too large", "ERR value too large"] * 1 + [
        "ERR value too large"
    ]
    assert replies[3:5] == [None, 0]
    assert str(replies[5]).startswith("ERR key is empty")
    # A request over max_request is a protocol error: refused, connection closed, nothing stored.
    replies = exchange(server.path, pack(b"SET", k, b"v" * (3 << 20)), shut=False)
    assert len(replies) == 1 and is_protocol_error(replies[0])
    assert exchange(server.path, pack(b"GET", k)) == [None]
    assert_serving(server)


def test_slow_reader_is_bounded_and_others_are_served(server: ServerThread) -> None:
    """A client that pipelines big replies and never reads them costs bounded memory."""
    big = b"x" * (1 << 20)
    key = uuid.uuid4().hex.encode()
    assert exchange(server.path, pack(b"SET", key, big)) == [b"OK"]
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(server.path)
    slow.setblocking(False)
    sent = 0
    req = pack(b"GET", key) * 64
    try:
        deadline = time.monotonic() + 10
        progress = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - progress < 0.5:  # until it stops reading us
            try:
                sent += slow.send(req)
                progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.02)
        assert sent < 20 << 20  # it stopped reading long before we sent everything we could
        assert_serving(server)  # and meanwhile serves others

        async def buffered() -> int:
            assert server.server is not None
            return max(c.transport.get_write_buffer_size() for c in server.server.conns if c.transport)

        assert server.call(buffered()) <= Limits().max_output + (2 << 20)
    finally:
        slow.close()


def test_many_hostile_clients_at_once(server: ServerThread) -> None:
    bad = [
        b"*1\r\n$99999999999\r\n",
        b"\x00\x01\x02",
        b"*3\r\n*1\r\n",
        b"PING\r\n",
        b"*2\r\n$3\r\nGET\r\n$2\r\na",
    ]
    errors: list[BaseException] = []

    def attack(data: bytes) -> None:
        try:
            for _ in range(10):
                exchange(server.path, data)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=attack, args=(d,)) for d in bad * 2]
    for t in threads:
        t.start()
    assert_serving(server)
    for t in threads:
        t.join(30)
    assert not errors
    assert_serving(server)
