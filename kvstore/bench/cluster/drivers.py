"""Load drivers, run inside client worker processes: N concurrent closed-loop clients.

A spec says what to drive: {"kind": "resp" | "kv" | "etcd", "endpoints": [...], "op":
"get" | "get_local" | "set"}. RESP clients are asyncio connections parsed by hiredis (one
connection each, on uvloop); gRPC clients (our KV service, etcd's KV) are grpc.aio calls
sharing one channel per endpoint and process, as gRPC clients do. Client i uses endpoint
i mod len(endpoints). Only requests that complete inside [t_start, t_end] count.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from kvstore.bench.common import VALUE_SIZE, key_of, self_cpu_s

Op = Callable[[bytes], Awaitable[bool]]


class RespConn:
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.sr: asyncio.StreamReader | None = None
        self.sw: asyncio.StreamWriter | None = None

    async def open(self, path: str) -> RespConn:
        self.sr, self.sw = await asyncio.open_unix_connection(path)
        return self

    async def call(self, *args: bytes) -> Any:
        assert self.sr is not None and self.sw is not None
        self.sw.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        r = self.reader
        reply = r.gets()
        while reply is False:
            chunk = await self.sr.read(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            r.feed(chunk)
            reply = r.gets()
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    async def close(self) -> None:
        if self.sw is not None:
            self.sw.close()
            try:
                await self.sw.wait_closed()
            except OSError:
                pass


def _value(key: bytes) -> bytes:
    return (key * (VALUE_SIZE // len(key) + 1))[:VALUE_SIZE]


class Clients:
    """Open `n` clients of a spec; `ops[i]` is client i's operation; aclose() closes all."""

    def __init__(self, spec: dict[str, Any], n: int, first: int) -> None:
        self.spec, self.n, self.first = spec, n, first
        self.ops: list[Op] = []
        self._resp: list[RespConn] = []
        self._channels: list[Any] = []

    async def open(self) -> Clients:
        kind, op, eps = self.spec["kind"], self.spec["op"], self.spec["endpoints"]
        if kind == "resp":
            async def one(i: int) -> Op:
                c = await RespConn().open(eps[(self.first + i) % len(eps)])
                self._resp.append(c)
                if op == "get_local":
                    await c.call(b"READONLY")
                if op == "set":
                    async def resp_set(k: bytes) -> bool:
                        return await c.call(b"SET", k, _value(k)) == b"OK"
                    return resp_set

                async def resp_get(k: bytes) -> bool:
                    return await c.call(b"GET", k) is not None
                return resp_get

            self.ops = list(await asyncio.gather(*(one(i) for i in range(self.n))))
            return self
        import grpc

        self._channels = [grpc.aio.insecure_channel(ep) for ep in eps]
        calls = [self._grpc_op(kind, op, ch) for ch in self._channels]
        self.ops = [calls[(self.first + i) % len(calls)] for i in range(self.n)]
        return self

    @staticmethod
    def _grpc_op(kind: str, op: str, ch: Any) -> Op:
        if kind == "kv":
            from kvstore.rpc.pb import kv_pb2, kv_pb2_grpc

            stub = kv_pb2_grpc.KVStub(ch)
            consistency = kv_pb2.LOCAL if op == "get_local" else kv_pb2.LINEARIZABLE
            if op == "set":
                async def kv_put(k: bytes) -> bool:
                    await stub.Put(kv_pb2.PutRequest(key=k, value=_value(k)), timeout=10)
                    return True
                return kv_put

            async def kv_get(k: bytes) -> bool:
                r = await stub.Get(kv_pb2.GetRequest(key=k, consistency=consistency), timeout=10)
                return bool(r.found)
            return kv_get
        from kvstore.bench.cluster import etcdkv

        m = etcdkv.messages()
        rng, put = etcdkv.stubs(ch)
        if op == "set":
            async def etcd_put(k: bytes) -> bool:
                await put(m["PutRequest"](key=k, value=_value(k)), timeout=10)
                return True
            return etcd_put
        serializable = op == "get_local"

        async def etcd_range(k: bytes) -> bool:
            r = await rng(m["RangeRequest"](key=k, serializable=serializable), timeout=10)
            return len(r.kvs) == 1
        return etcd_range

    async def aclose(self) -> None:
        for c in self._resp:
            await c.close()
        for ch in self._channels:
            await ch.close()


async def _drive(spec: dict[str, Any], n: int, first: int, t_start: int, t_end: int, nkeys: int,
                 seed: int) -> dict[str, Any]:
    clients = await Clients(spec, n, first).open()
    lat: array[int] = array("q")
    st = {"ok": 0, "wrong": 0, "errors": 0}
    first_error: list[str] = []
    clock = time.monotonic_ns

    async def client(op: Op, rng: random.Random) -> None:
        await asyncio.sleep(max(0.0, (t_start - clock()) / 1e9))
        t = clock()
        while t < t_end:
            k = key_of(rng.randrange(nkeys))
            try:
                good = await op(k)
            except Exception as e:
                st["errors"] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {str(e)[:200]}")
                await asyncio.sleep(0.001)
                t = clock()
                continue
            t1 = clock()
            if t1 <= t_end:
                if good:
                    st["ok"] += 1
                    lat.append(t1 - t)
                else:
                    st["wrong"] += 1
            t = clock()

    cpu0 = self_cpu_s()
    try:
        async with asyncio.timeout((t_end - clock()) / 1e9 + 30):
            await asyncio.gather(*(client(op, random.Random(seed * 7919 + first + i))
                                   for i, op in enumerate(clients.ops)))
    finally:
        cpu = self_cpu_s() - cpu0
        await clients.aclose()
    return {**st, "cpu_s": cpu, "lat": lat.tobytes(), "error": first_error[0] if first_error else None}


async def _preload(spec: dict[str, Any], keys: range, concurrency: int) -> int:
    clients = await Clients({**spec, "op": "set"}, concurrency, 0).open()
    todo = iter(keys)
    done = 0

    async def worker(op: Op) -> None:
        nonlocal done
        for i in todo:
            for attempt in range(50):
                try:
                    await op(key_of(i))
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
            done += 1

    try:
        await asyncio.gather(*(worker(op) for op in clients.ops))
    finally:
        await clients.aclose()
    return done


def _run(spec: dict[str, Any], coro: Awaitable[Any]) -> Any:
    if spec["kind"] == "resp":
        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                return r.run(coro)  # type: ignore[arg-type]
        except ImportError:
            pass
    return asyncio.run(coro)  # type: ignore[arg-type]


def handle(msg: Any) -> Any:
    """A cluster client worker's message handler (see kvstore.bench.workers)."""
    op = msg[0]
    if op == "run":
        _, spec, n, first, t_start, t_end, nkeys, seed = msg
        return _run(spec, _drive(spec, n, first, t_start, t_end, nkeys, seed))
    if op == "preload":
        _, spec, lo, hi, concurrency = msg
        return _run(spec, _preload(spec, range(lo, hi), concurrency))
    raise ValueError(f"unknown message {op!r}")
