"""A fault-injecting TCP proxy on every link between nodes: partitions without privileges.

One `Link` is one directed link, node i -> node j: a listener on a free loopback port
that node i dials instead of node j's gRPC port (the node reads the map from
KVSTORE_PEER_ADDRESSES). Both directions of every TCP connection i opens to j go
through the link, so cutting it silences i's requests to j and j's answers on them;
j's own messages to i travel on the link j -> i.

Faults, all changeable at runtime and from any thread:

- `cut()`: a partition, not a refusal. New connections are accepted and then hear
  nothing; existing ones stop moving bytes (mode "blackhole": what a real network
  does, and TCP resumes them after `heal()` if neither end gave up meanwhile) or are
  reset at once (mode "reset").
- `set_delay(ms, jitter_ms)`: every chunk is held `ms` plus up to `jitter_ms`, order kept.
- `set_loss(p)`: a flaky link. TCP never loses bytes, so loss shows as what it costs a
  connection: with probability p per chunk, the connection stalls for a while (a
  retransmission timeout) or, one time in four, is reset.

`ProxyMesh` builds the n*(n-1) links of a cluster and speaks in partitions: isolate a
node, split into groups, bridge two sides through one node, a majorities ring. All
the sockets live on one asyncio loop in a background thread of the caller's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 64 * 1024
STALL_S = (0.2, 1.0)  # how long a "lost" chunk holds its connection up (an RTO or a few)
RESET_SHARE = 0.25  # of the loss events, the share that resets the connection


class ProxyLoop:
    """An asyncio loop in a daemon thread, and a way to run things on it from outside."""

    def __init__(self, name: str = "proxy") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # closing: cancel what is left so that sockets are closed
        pending = asyncio.all_tasks(self.loop)
        for t in pending:
            t.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("ProxyLoop.run called from the loop's own thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def wrap() -> T:
            return fn()

        return self.run(wrap(), timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)


@dataclass
class LinkStats:
    accepted: int = 0  # connections accepted
    active: int = 0  # connections open now
    bytes_up: int = 0  # src -> dst (requests)
    bytes_down: int = 0  # dst -> src (answers)
    resets: int = 0  # connections the proxy reset (cut in reset mode, loss, heal of held ones)
    stalls: int = 0  # loss events that stalled a connection
    refused: int = 0  # upstream connects that failed (the destination is down)
    delayed_chunks: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Conn:
    """One proxied connection: a client side, an upstream side once connected, two pumps."""

    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.c_reader, self.c_writer = reader, writer
        self.u_reader: asyncio.StreamReader | None = None
        self.u_writer: asyncio.StreamWriter | None = None
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        link = self.link
        try:
            await link._open.wait()  # accepted during a cut: hear nothing until the heal
            try:
                self.u_reader, self.u_writer = await asyncio.open_connection(link.target_host, link.target_port)
            except OSError:
                link.stats.refused += 1
                self.reset()
                return
            await asyncio.gather(
                self._pump(self.c_reader, self.u_writer, up=True),
                self._pump(self.u_reader, self.c_writer, up=False),
            )
        except asyncio.CancelledError:
            pass
        finally:
            self.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Move bytes one way: read, wait out cuts and delays, write; keep the order."""
        link = self.link
        # Unbounded queue, bounded by a semaphore: the end-of-stream mark never blocks.
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        room = asyncio.Semaphore(64)
        loop = asyncio.get_running_loop()

        async def reading() -> None:
            last_due = 0.0
            try:
                while True:
                    await link._open.wait()
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    if link.loss > 0 and link.rng.random() < link.loss:
                        if link.rng.random() < RESET_SHARE:
                            self.reset()
                            return
                        link.stats.stalls += 1
                        await asyncio.sleep(link.rng.uniform(*STALL_S))
                    due = loop.time()
                    if link.delay_s > 0 or link.jitter_s > 0:
                        due += link.delay_s + link.rng.uniform(0.0, link.jitter_s)
                        link.stats.delayed_chunks += 1
                    last_due = max(last_due, due)  # jitter never reorders a byte stream
                    await room.acquire()
                    queue.put_nowait((last_due, data))
            except OSError:
                self.reset()  # one side reset: so does the other
            finally:
                queue.put_nowait(None)

        async def writing() -> None:
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    room.release()
                    due, data = item
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await link._open.wait()
                    writer.write(data)
                    if up:
                        link.stats.bytes_up += len(data)
                    else:
                        link.stats.bytes_down += len(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                self.reset()

        rt = asyncio.ensure_future(reading())
        try:
            await writing()
        finally:
            if not rt.done():
                rt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rt

    def reset(self, count: bool = True) -> None:
        """Abort both sides with a TCP RST (SO_LINGER 0), so the peers notice at once."""
        if self.closed:
            return
        self.closed = True
        if count:
            self.link.stats.resets += 1
        for w in (self.c_writer, self.u_writer):
            if w is None:
                continue
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.c_writer, self.u_writer):
            if w is not None:
                w.close()


class Link:
    """One directed link: a listener that forwards to `target`, with faults you can set."""

    def __init__(self, ploop: ProxyLoop, name: str, target: str, *, host: str = "127.0.0.1",
                 seed: int | None = None) -> None:
        self.ploop = ploop
        self.name = name
        self.target = target
        th, _, tp = target.rpartition(":")
        self.target_host, self.target_port = th or "127.0.0.1", int(tp)
        self.host = host
        self.rng = random.Random(seed)
        self.stats = LinkStats()
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.loss = 0.0
        self.is_cut = False
        self.conns: set[_Conn] = set()
        self._open: asyncio.Event
        self._server: asyncio.Server | None = None
        self.port = ploop.run(self._start())

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _start(self) -> int:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0, backlog=128)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(self, reader, writer)
        self.stats.accepted += 1
        self.stats.active += 1
        self.conns.add(conn)
        conn.task = asyncio.current_task()  # type: ignore[assignment]
        try:
            await conn.run()
        finally:
            self.conns.discard(conn)
            self.stats.active -= 1

    # -- controls (any thread) --

    def cut(self, mode: str = "blackhole") -> None:
        """Partition the link; mode "blackhole" (bytes stop) or "reset" (connections die too)."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"cut mode must be 'blackhole' or 'reset', not {mode!r}")

        def do() -> None:
            self.is_cut = True
            self._open.clear()
            if mode == "reset":
                for c in list(self.conns):
                    c.reset()

        self._control(do)

    def heal(self) -> None:
        def do() -> None:
            self.is_cut = False
            self._open.set()

        self._control(do)

    def set_delay(self, ms: float, jitter_ms: float = 0.0) -> None:
        if ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")

        def do() -> None:
            self.delay_s, self.jitter_s = ms / 1000.0, jitter_ms / 1000.0

        self._control(do)

    def set_loss(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("loss must be a probability in [0, 1]")

        def do() -> None:
            self.loss = p

        self._control(do)

    def clear(self) -> None:
        """No fault at all: healed, no delay, no loss."""

        def do() -> None:
            self.is_cut = False
            self.delay_s = self.jitter_s = self.loss = 0.0
            self._open.set()

        self._control(do)

    def reset_connections(self) -> None:
        def do() -> None:
            for c in list(self.conns):
                c.reset()

        self._control(do)

    def snapshot(self) -> dict[str, Any]:
        def do() -> dict[str, Any]:
            return {"link": self.name, "address": self.address, "target": self.target, "cut": self.is_cut,
                    "delay_ms": self.delay_s * 1000, "jitter_ms": self.jitter_s * 1000, "loss": self.loss,
                    **self.stats.to_dict()}

        return self.ploop.call(do)

    def _control(self, fn: Callable[[], Any]) -> None:
        self.ploop.call(fn)

    async def _aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.reset(count=False)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ploop.run(self._aclose())


class Proxy:
    """Standalone links on their own loop thread (what the tests and one-off uses want)."""

    def __init__(self, seed: int | None = None) -> None:
        self.ploop = ProxyLoop()
        self.links: list[Link] = []
        self._seeds = random.Random(seed)

    def link(self, target: str, name: str = "") -> Link:
        ln = Link(self.ploop, name or f"->{target}", target, seed=self._seeds.randrange(1 << 30))
        self.links.append(ln)
        return ln

    def close(self) -> None:
        for ln in self.links:
            ln.close()
        self.ploop.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProxyMesh:
    """A link for every ordered pair of nodes, and partitions spoken in node names."""

    kind = "proxy"
    can_shape = True  # delay and loss

    def __init__(self, nodes: dict[str, str], *, seed: int | None = None, host: str = "127.0.0.1") -> None:
        self.nodes = list(nodes)
        self.targets = dict(nodes)
        self.ploop = ProxyLoop("proxy-mesh")
        seeds = random.Random(seed)
        self.links: dict[tuple[str, str], Link] = {}
        try:
            for a, b in itertools.permutations(self.nodes, 2):
                self.links[(a, b)] = Link(self.ploop, f"{a}->{b}", nodes[b], host=host,
                                          seed=seeds.randrange(1 << 30))
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"proxy: {len(self.links)} TCP proxies on loopback, one per directed link"

    # -- what each node is told --

    def peer_addresses(self, node: str) -> dict[str, str]:
        """KVSTORE_PEER_ADDRESSES for `node`: where it dials each peer."""
        return {b: ln.address for (a, b), ln in self.links.items() if a == node}

    def node_env(self, node: str) -> dict[str, str]:
        return {"KVSTORE_PEER_ADDRESSES": json.dumps(self.peer_addresses(node))}

    def spawn(self, data_dir: Path, cfg_path: Path, node: str, env: dict[str, str]) -> int:
        from kvstore.cluster import procs

        return procs.spawn(data_dir, cfg_path, node, extra_env=env)

    def link(self, src: str, dst: str) -> Link:
        return self.links[(src, dst)]

    # -- partitions: each call describes the whole network (links not cut are healed) --

    def _apply_cuts(self, cut: Iterable[tuple[str, str]], mode: str = "blackhole") -> None:
        cut = set(cut)
        for pair, ln in self.links.items():
            if pair in cut:
                if not ln.is_cut:
                    ln.cut(mode)
            elif ln.is_cut:
                ln.heal()

    def connected(self, src: str, dst: str) -> bool:
        return src == dst or not self.links[(src, dst)].is_cut

    def cut_links(self, pairs: Iterable[tuple[str, str]], mode: str = "blackhole") -> None:
        """Cut exactly these directed links (and heal every other one)."""
        pairs = list(pairs)
        for p in pairs:
            if p not in self.links:
                raise ValueError(f"no link {p[0]}->{p[1]}")
        self._apply_cuts(pairs, mode)

    def partition(self, groups: Sequence[Iterable[str]], mode: str = "blackhole") -> None:
        """Nodes talk only within their group; a node in no group is alone."""
        group_of: dict[str, int] = {}
        for i, g in enumerate(groups):
            for n in g:
                if n not in self.targets:
                    raise ValueError(f"unknown node {n!r}")
                if n in group_of:
                    raise ValueError(f"node {n!r} is in two groups")
                group_of[n] = i
        for n in self.nodes:
            group_of.setdefault(n, -1 - self.nodes.index(n))
        self._apply_cuts(((a, b) for (a, b) in self.links if group_of[a] != group_of[b]), mode)

    def isolate(self, node: str, mode: str = "blackhole") -> None:
        self.partition([[node], [n for n in self.nodes if n != node]], mode)

    def bridge(self, a_side: Iterable[str], b_side: Iterable[str], bridge_node: str,
               mode: str = "blackhole") -> None:
        """Two sides that cannot talk to each other, both talking to `bridge_node`."""
        a, b = set(a_side), set(b_side)
        if a & b or bridge_node in a | b:
            raise ValueError("the sides and the bridge must not overlap")
        cut = [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
        self._apply_cuts(cut, mode)

    def ring(self, order: Sequence[str] | None = None, mode: str = "blackhole") -> None:
        """Majorities ring: each node hears from a majority, no two nodes the same one."""
        cut = ring_cuts(list(order or self.nodes))
        self._apply_cuts(cut, mode)

    def heal_all(self) -> None:
        for ln in self.links.values():
            ln.clear()

    def set_delay(self, ms: float, jitter_ms: float = 0.0, links: Iterable[tuple[str, str]] | None = None) -> None:
        for pair in self.links if links is None else links:
            self.links[pair].set_delay(ms, jitter_ms)

    def set_loss(self, p: float, links: Iterable[tuple[str, str]] | None = None) -> None:
        for pair in self.links if links is None else links:
            self.links[pair].set_loss(p)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {ln.name: ln.snapshot() for ln in self.links.values()}

    def close(self) -> None:
        for ln in self.links.values():
            ln.close()
        self.ploop.close()

    def __enter__(self) -> ProxyMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ring_cuts(order: list[str]) -> list[tuple[str, str]]:
    """The directed links to cut for a majorities ring over `order`.

    Node i hears from the majority M(i), a window of the ring around i. When a majority
    has an odd size the window is symmetric (i-k .. i+k) and so is every cut; when it is
    even (3 nodes: majority 2) no symmetric ring exists, and the window leans forward
    (i .. i+m-1), so some links are cut one way only. Link u -> v is cut when u is not
    in M(v).
    """
    n = len(order)
    if n < 3:
        raise ValueError("a majorities ring needs at least 3 nodes")
    m = n // 2 + 1
    offsets = range(-(m // 2), m // 2 + 1) if m % 2 else range(0, m)
    cuts = []
    for vi, v in enumerate(order):
        hears = {order[(vi + o) % n] for o in offsets}
        cuts += [(u, v) for u in order if u != v and u not in hears]
    return cuts
