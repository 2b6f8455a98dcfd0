"""A node: the Raft core driven on one asyncio loop, with its storage, cache and servers.

Data flows one way. A write enters at the socket or over gRPC, becomes a proposal (on
the leader) or is forwarded to the leader, is replicated, committed, applied to LMDB
and the shared-memory cache, and only then answered. Everything that touches the core
runs on the loop thread, so the core needs no locks. One `Ready` at a time: persist
(one fsync for all its entries: group commit), send, apply, advance.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from kvstore import config as cfgmod
from kvstore import membership, snapshots
from kvstore import statemachine as sm
from kvstore.cache import ShmCache
from kvstore.cluster.procs import SEEN_LEADER
from kvstore.config import ClusterConfig, NodeConfig
from kvstore.errors import KVError, TryAgain, Unknown, WrongCluster
from kvstore.forward import Forwarder
from kvstore.local.fast import memo_reads
from kvstore.local.server import Limits, RespServer
from kvstore.local.workers import WorkerPool
from kvstore.metrics import NodeMetrics
from kvstore.raft import (
    JOIN,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MsgType,
    RaftCore,
    Ready,
    SnapshotMeta,
)
from kvstore.readindex import ReadBarrier
from kvstore.rpc import convert
from kvstore.rpc.pb import raft_pb2_grpc as pbg
from kvstore.rpc.server import start_grpc_server
from kvstore.rpc.transport import Transport
from kvstore.storage import Store
from kvstore.writepath import Pending, WritePath

log = logging.getLogger("kvstore.node")


# An entry the data already held (an installed snapshot's data index was past it).
_SKIPPED_RESULT: Any = object()
_SKIPPED: Any = (_SKIPPED_RESULT, [])


def _apply_fn(cmds: list[sm.Command] | None, batch: bool) -> Any:
    if cmds is None:
        return _noop
    if batch:
        return lambda view: sm.apply_all(view, cmds)
    cmd = cmds[0]
    return lambda view: sm.apply(view, cmd)


def _keys_of(items: list[tuple[Entry, list[sm.Command] | None, bool]]) -> set[bytes]:
    """The keys the commands of these (entry, commands, batch) items change."""
    return {k for _, cs, _ in items if cs is not None for c in cs for k in sm.keys_of(c)}


def _noop(view: Any) -> tuple[None, list[tuple[bytes, bytes | None]]]:
    return None, []


def node_home(data_dir: Path, name: str) -> Path:
    return data_dir / name


class Node(WritePath):
    """One member of a cluster; also the `Backend` of its RESP server."""

    def __init__(self, cfg: ClusterConfig, name: str, data_dir: Path) -> None:
        if not cfg.id:
            raise WrongCluster(f"{cfg.path or 'the cluster config'} has no cluster id; "
                               "`kvstore cluster up` writes one, or set [cluster] id")
        self.cfg = cfg
        self.name = self.node_name = name
        self.me: NodeConfig = cfg.node(name)
        self.data_dir = data_dir.resolve()
        self.home = node_home(self.data_dir, name)
        self.socket_path = Path(self.me.socket) if self.me.socket else self.home / "kv.sock"
        self.cluster_id = cfg.id
        self.timeout = cfg.raft.request_timeout_ms / 1000
        self._wake = asyncio.Event()
        self._leader_known = asyncio.Event()
        self._waiters: dict[int, tuple[int, Pending]] = {}
        self._batch: list[tuple[bytes, asyncio.Future[Any], Any]] = []
        self._batch_bytes = 0
        self._expiry: deque[Any] = deque()
        self._expiry_odd: list[Any] = []
        self._expiry_seq = itertools.count()
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="kvstore-io")
        self._snap_senders: dict[str, asyncio.Task[None]] = {}
        self._compacting = False
        self._log_bytes = 0  # data bytes of the applied entries past the snapshot point (about)
        self.cache_paused = False  # a snapshot install empties the cache and keeps it empty
        self._leader_stubs: dict[str, tuple[grpc.aio.Channel, pbg.RaftStub]] = {}
        self.addresses = {n.name: n.grpc_address for n in cfg.nodes}
        # Drills route each link through a fault-injecting proxy: {"n2": "127.0.0.1:9012", ...}
        override = os.environ.get("KVSTORE_PEER_ADDRESSES")
        if override:
            self.addresses.update(json.loads(override))
        self.snapshot_index = 0
        self.applied_writes = 0  # commands applied since this process started (a batch holds many)
        self._metrics_server: Any = None
        self._vote_guard = False  # see procs.rejoining
        # Test-only: answer "linearizable" reads from local state. Exists so that a drill can
        # show the checker catches a node that lies; never set it in production.
        self._unsafe_local_reads = os.environ.get("KVSTORE_UNSAFE_LOCAL_READS") == "1"

    # ---- start and stop -------------------------------------------------------------

    def _open_state(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.home / "snapshot.partial").unlink(missing_ok=True)  # an install cut short by a crash
        st = self.cfg.storage
        self.store = Store(self.home / "data", map_size=st.map_size_mb << 20,
                           max_map_size=st.max_map_size_mb << 20, sync=st.sync)
        cid = self.store.meta_get("cluster_id")
        if cid is None:
            self.store.meta_set("cluster_id", self.cluster_id.encode())
            if os.environ.get("KVSTORE_REJOIN") == "1":
                self._vote_guard = True
                log.warning("%s: started with no data in a cluster that already has a leader: no votes until "
                            "a leader is heard (the lost data may have held a vote in the current term)",
                            self.name)
        elif cid.decode() != self.cluster_id:
            self.store.close()
            raise WrongCluster(f"data directory {self.home} belongs to cluster {cid.decode()}, "
                               f"but {self.cfg.path or 'the config'} is cluster {self.cluster_id}")
        hs_blob = self.store.hard_state()
        hs = convert.hard_state_from_blob(hs_blob) if hs_blob else None
        snap_blob = self.store.meta_get("snapshot")
        snap = convert.snap_from_blob(snap_blob) if snap_blob else None
        self.snapshot_index = snap.index if snap else 0
        first, last = self.store.log_bounds()
        entries = [convert.entry_from_blob(i, b) for i, b in self.store.log_get(first, last + 1)] if last else []
        # Only a brand-new log uses this: founding members bootstrap with the initial voters,
        # a node added later (initial = false) starts empty and learns the rest from the leader.
        conf = ConfState(voters=tuple(n.name for n in self.cfg.nodes if n.initial), learners=()) \
            if self.me.initial else JOIN
        r = self.cfg.raft
        rcfg = Config(id=self.name, election_tick=r.election_ticks, heartbeat_tick=r.heartbeat_ticks,
                      max_inflight=r.max_inflight, max_entries_per_msg=r.max_entries_per_msg,
                      max_bytes_per_msg=r.max_bytes_per_msg, max_uncommitted=r.max_uncommitted)
        self.core = RaftCore(rcfg, conf=conf, hard_state=hs, entries=entries, snapshot=snap,
                             applied=self.store.applied_index(), rng=random.Random())
        self.applied = self.store.applied_index()
        self._log_bytes = self.core.log.data_bytes(self.core.log.first_index, self.applied + 1)
        self._synced_vote = (hs.term, hs.vote) if hs else (0, None)
        self.cache_name = cache_name = ShmCache.name_for(str(self.data_dir), self.name)
        try:
            self.cache = ShmCache.create(cache_name, size_bytes=self.cfg.cache.size_mb << 20,
                                         max_value=self.cfg.cache.max_value)
        except FileExistsError as e:  # CacheInUse: another live process owns it
            self.store.close()
            raise KVError(f"node {self.name} of {self.data_dir} is already running ({e})") from None
        log.info("%s: opened state: term %d, applied %d, log %d..%d, voters %s", self.name,
                 hs.term if hs else 0, self.applied, first, last, ",".join(self.core.conf_state.voters))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_state()
        self.transport = Transport(self.name, self.cluster_id, self._address_of,
                                   on_unreachable=self._unreachable,
                                   max_message=self.cfg.limits.grpc_max_message,
                                   credentials=self._channel_credentials())
        self.reads = ReadBarrier(self)
        self.forwarder = Forwarder(self)
        self.metrics = NodeMetrics(self.name)
        # The RESP hot path (kvstore/local/fast.py) reads the cache first and a batch's
        # misses in one LMDB transaction; READONLY reads on a node take it.
        cached, replies, _ = memo_reads(self.cache)
        count = self.metrics.count

        def cache_get(key: bytes) -> bytes | None:
            count("get", "ok")
            return cached(key)

        def cache_replies(keys: list[bytes]) -> list[bytes | None]:
            count("get", "ok", n=len(keys))
            return replies(keys)

        self.cache_get = cache_get
        self.cache_replies = cache_replies
        self.get_uncached = self.store.get_many
        self.metrics.watch(self.status, self.cache.stats, lambda: self._clients())
        if self.me.metrics_port:
            try:
                self._metrics_server = self.metrics.serve(self.me.host, self.me.metrics_port)
            except OSError as e:
                log.warning("%s: no metrics endpoint on %s:%d: %s", self.name, self.me.host,
                            self.me.metrics_port, e.strerror)
        self.grpc_server = await start_grpc_server(self)
        lim = self.cfg.limits
        self.resp = RespServer(self, str(self.socket_path),
                               limits=Limits(max_key=lim.max_key, max_value=lim.max_value,
                                             max_clients=lim.max_clients, max_pipeline=lim.max_pipeline),
                               socket_mode=self.cfg.local.socket_mode)
        await self.resp.start()
        self.pool: WorkerPool | None = None
        if self.cfg.local.workers > 0:
            assert self.resp.socket is not None
            self.pool = WorkerPool(self, self.resp.socket, workers=self.cfg.local.workers,
                                   store_path=str(self.home / "data"), cache_name=self.cache_name,
                                   internal_path=str(self.home / "internal.sock"), limits=self.resp.limits,
                                   path=str(self.socket_path))
            await self.pool.start()
        self._tasks += [asyncio.create_task(self._ticker(), name="ticker"),
                        asyncio.create_task(self._ready_loop(), name="ready")]
        (self.home / "node.pid").write_text(f"{os.getpid()}\n")
        log.info("%s: serving: grpc %s, socket %s", self.name, self.me.grpc_address, self.socket_path)

    async def stop(self) -> None:
        log.info("%s: stopping (term %d)", self.name, self.core.term)
        if self.core.role.status_name == "leader" and len(self.core.conf_state.voters) > 1:
            try:
                await asyncio.wait_for(self.transfer_leadership(None), 1.5)
            except (TimeoutError, Exception) as e:
                log.info("%s: leadership transfer before stop did not finish: %s", self.name, e)
        if self.pool is not None:
            await self.pool.stop()
        await self.resp.close()
        await self.grpc_server.stop(0.3)
        for t in [*self._tasks, *self._snap_senders.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.forwarder.close()
        await self.transport.close()
        for ch, _ in self._leader_stubs.values():
            await ch.close(grace=None)
        if self._metrics_server is not None:
            srv = self._metrics_server[0] if isinstance(self._metrics_server, tuple) else self._metrics_server
            srv.shutdown()
        self._io.shutdown(wait=True)
        self.store.close()
        self.cache.close()
        self.cache.unlink()
        for p in (self.home / "node.pid",):
            p.unlink(missing_ok=True)
        log.info("%s: stopped", self.name)

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        await self.stop()

    # ---- the Raft loop ----------------------------------------------------------------

    def kick(self) -> None:
        self._wake.set()

    def receive(self, msg: Any) -> None:
        if msg.dst != self.name:
            log.warning("%s: dropped a message for %s from %s", self.name, msg.dst, msg.src)
            return
        if self._vote_guard:
            if msg.type in (MsgType.VOTE, MsgType.PREVOTE):
                return  # unanswered, as if lost
            if msg.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._vote_guard = False
                log.info("%s: heard from leader %s (term %d); voting again", self.name, msg.src, msg.term)
        self.core.step(msg)
        self._wake.set()

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.raft.tick_ms / 1000
        nxt = loop.time()
        while True:
            nxt += interval
            delay = nxt - loop.time()
            if delay < -interval:  # the loop stalled: do not fire a burst of ticks
                nxt = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))
            self.core.tick()
            self.reads.on_tick()
            if self._expiry or self._expiry_odd:
                self._expire_waiters(loop.time())
            self._wake.set()

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self.core.has_ready():
                    rd = self.core.ready()
                    await self._handle_ready(rd)
                    self.core.advance(rd)
            except Exception:
                log.exception("%s: fatal error in the raft loop (term %d); stopping", self.name, self.core.term)
                self._stopping.set()
                return

    async def _handle_ready(self, rd: Ready) -> None:
        """Persist and apply in one transaction (one fsync, off the loop), then send, then answer.

        While the fsync runs, the loop keeps taking requests and messages into the core:
        they form the next Ready, which is how writes batch up (group commit).
        """
        if rd.soft_state is not None:
            ss = rd.soft_state
            log.info("%s: role %s, leader %s, term %d", self.name, ss.role.status_name, ss.leader,
                     self.core.term)
            self.metrics.elections.inc()
            if ss.leader:
                self._leader_known.set()
                marker = self.home / SEEN_LEADER
                if not marker.exists():
                    marker.write_text(f"{ss.leader} {self.core.term}\n")
            else:
                self._leader_known.clear()
        # (entry, its commands or None, whether a BATCH): see statemachine.py
        items: list[tuple[Entry, list[sm.Command] | None, bool]] = []
        for e in rd.committed_entries:
            cmds = None
            if e.type == EntryType.NORMAL:
                try:
                    cmds = sm.decode_entry(e.data)
                except ValueError as err:
                    log.error("%s: entry %d (term %d) is not a command (%s); applied as a no-op", self.name,
                              e.index, e.term, err)
            items.append((e, cmds, cmds is not None and e.data[0] == sm.OP_BATCH))
        keys = _keys_of(items)
        if keys:  # no reader may see an old value once LMDB has the new one
            self.cache.delete_many(keys)
        hs = rd.hard_state
        msgs = rd.messages
        if msgs and (hs is None or (hs.term, hs.vote) == self._synced_vote):
            # A leader's appends go out while it writes them itself (thesis 10.2.1): the
            # core counts its own copy only after advance(), so nothing commits early.
            early, msgs = rd.early_messages()
            if early:
                self._send(early)
        t0 = time.perf_counter()
        if rd.snapshot is not None or rd.entries or hs is not None or items:
            # Term and vote must be on disk before any message that depends on them; the
            # commit index alone need not be (etcd's MustSync): it is learnt again.
            must_sync = bool(rd.entries) or rd.snapshot is not None or (
                hs is not None and (hs.term, hs.vote) != self._synced_vote)
            # Committed entries that were on disk before this Ready are applied (and their
            # writes answered) first, in a transaction of their own that needs no fsync,
            # while the io thread goes on to write and fsync this Ready's new entries: a
            # write is answered one fsync sooner. The rest apply after the new entries.
            ahead: list[tuple[Entry, list[sm.Command] | None, bool]] = []
            if items and rd.entries and rd.snapshot is None:
                first_new = rd.entries[0].index
                n = sum(1 for e, _, _ in items if e.index < first_new)
                ahead, items = items[:n], items[n:]
            # Keys the later entries change stay out of the cache until those apply too:
            # the cache never holds a value older than LMDB's.
            later = _keys_of(items) if ahead and items else set()
            outs = await self._loop.run_in_executor(
                self._io, self._persist, rd.snapshot,
                [(e.index, convert.entry_blob(e)) for e in rd.entries],
                convert.hard_state_blob(hs) if hs else None,
                [(e.index, _apply_fn(cs, b)) for e, cs, b in items], must_sync,
                [(e.index, _apply_fn(cs, b)) for e, cs, b in ahead],
                (lambda outs: self._after_apply_ahead(ahead, outs, later)) if ahead else None)
            if hs is not None:
                self._synced_vote = (hs.term, hs.vote)
            self.metrics.fsync.observe(time.perf_counter() - t0)
            if rd.entries:
                self.metrics.batch_entries.observe(len(rd.entries))
        else:
            outs = []
        if msgs:
            self._send(msgs)
        if items:
            self._after_apply(items, outs)
        for rs in rd.read_states:
            self.reads.on_read_state(rs.index, rs.context)

    def _persist(self, snap: SnapshotMeta | None, entries: list[tuple[int, bytes]], hard_state: bytes | None,
                 apply: list[tuple[int, Any]], must_sync: bool = True, early: list[tuple[int, Any]] | None = None,
                 early_done: Any = None) -> list[tuple[sm.Result, list[tuple[bytes, bytes | None]]]]:
        """On the io thread, in Ready order: one transaction, one fsync (and before it,
        with `early`, one transaction without an fsync whose outcome goes to early_done on
        the loop at once).

        Entries the data already holds (an installed snapshot's data index is past them)
        are skipped here, on the io thread, where the applied index cannot move under us.
        """
        if snap is not None:  # the core replaced its whole log with a received snapshot
            self.store.meta_set("snapshot", convert.snap_blob(snap))
            _, last = self.store.log_bounds()
            if last:
                self.store.log_compact(last)
            self.snapshot_index = snap.index
        if early:
            outs = self._save(early, [], None, False)
            self._loop.call_soon_threadsafe(early_done, outs)
        return self._save(apply, entries, hard_state, must_sync)

    def _save(self, apply: list[tuple[int, Any]], entries: list[tuple[int, bytes]], hard_state: bytes | None,
              must_sync: bool) -> list[tuple[sm.Result, list[tuple[bytes, bytes | None]]]]:
        applied = self.store.applied_index()
        todo = [(i, fn) for i, fn in apply if i > applied]
        outs = self.store.save_ready(entries, hard_state, todo, must_sync)
        if len(todo) == len(apply):
            return outs
        done = dict(zip((i for i, _ in todo), outs, strict=True))
        return [done.get(i, _SKIPPED) for i, _ in apply]

    def _send(self, msgs: list[Any]) -> None:
        out = []
        for m in msgs:
            if m.type == MsgType.SNAPSHOT:  # the data travels on its own stream
                if m.dst not in self._snap_senders:
                    self._snap_senders[m.dst] = asyncio.create_task(self._send_snapshot(m))
            else:
                out.append(m)
        self.transport.send(out)

    async def _send_snapshot(self, m: Any) -> None:
        ok = False
        try:
            ok = await snapshots.send(self, m)
            if ok:
                self.metrics.snapshots.labels("sent").inc()
        finally:
            self._snap_senders.pop(m.dst, None)
            self.core.report_snapshot(m.dst, ok)
            self._wake.set()

    def _maybe_compact(self) -> None:
        """Drop the log behind the applied index once raft.snapshot_entries entries or
        raft.snapshot_bytes bytes were applied past the snapshot point, keeping a tail for
        followers a little behind: half of each bound, and at most 5,000 entries."""
        every, most = self.cfg.raft.snapshot_entries, self.cfg.raft.snapshot_bytes
        if self._compacting:
            return
        by_count = every > 0 and self.applied - self.snapshot_index >= every
        if not by_count and not (most > 0 and self._log_bytes >= most):
            return
        rlog = self.core.log
        upto = min(self.applied, self.core.commit)
        if not by_count:  # the running count only estimates (a snapshot install resets the log)
            self._log_bytes = rlog.data_bytes(rlog.first_index, upto + 1)
            if self._log_bytes < most:
                return
        keep_count = min(every // 2, 5000) if every > 0 else 5000
        idx = rlog.tail_start(upto, keep_count, most // 2 if most > 0 else 1 << 62) - 1
        term = rlog.term(idx) if idx > self.snapshot_index else None
        if term is None:
            return
        meta = self.core.compact(idx, term)
        self._log_bytes = rlog.data_bytes(idx + 1, upto + 1)
        self._compacting = True

        def persist() -> None:
            self.store.meta_set("snapshot", convert.snap_blob(meta))
            self.store.log_compact(meta.index)

        fut = asyncio.get_running_loop().run_in_executor(self._io, persist)

        def done(f: Any) -> None:
            self._compacting = False
            if f.exception() is None:
                self.snapshot_index = meta.index
                self.metrics.snapshots.labels("taken").inc()
                log.info("%s: compacted the log up to %d (term %d)", self.name, meta.index, meta.term)
            else:
                log.error("%s: compaction failed: %s", self.name, f.exception())

        fut.add_done_callback(done)

    def _after_apply(self, items: list[tuple[Entry, list[sm.Command] | None, bool]],
                     outs: list[tuple[Any, list[tuple[bytes, bytes | None]]]], skip: set[bytes] | None = None) -> None:
        latest: dict[bytes, bytes | None] = {}
        for out in outs:
            if out is not _SKIPPED:
                latest.update(out[1])
        if latest and not self.cache_paused:
            self.cache.put_many([(k, v) for k, v in latest.items() if v is not None and not (skip and k in skip)])
        self.applied = max(self.applied, items[-1][0].index)
        self.applied_writes += sum(len(cs) for _, cs, _ in items if cs)
        self._log_bytes += sum(len(e.data) for e, _, _ in items)
        for (e, _, batch), (res, _) in zip(items, outs, strict=True):
            if e.type == EntryType.CONF_CHANGE:
                self._conf_applied(e)
            w = self._waiters.pop(e.index, None)
            if w is None:
                continue
            term, pending = w
            if term != e.term:
                self.settle(pending, e.index, None, TryAgain("leadership changed before the write committed"))
            elif res is _SKIPPED_RESULT:
                self.settle(pending, e.index, None, Unknown("applied through a snapshot; its result is unknown"))
            else:
                results = res if batch else [res]
                if len(results) == len(pending.futs):
                    self.settle(pending, e.index, results, None)
                else:  # cannot happen: our own entry of that term
                    self.settle(pending, e.index, None,
                                Unknown(f"entry {e.index} holds {len(results)} writes, not {len(pending.futs)}"))
        self._wake_applied()
        self._maybe_compact()

    def _after_apply_ahead(self, items: list[tuple[Entry, list[sm.Command] | None, bool]],
                           outs: list[tuple[Any, list[tuple[bytes, bytes | None]]]], later: set[bytes]) -> None:
        """_after_apply from the io thread's callback: a failure stops the node, as it
        would in the Raft loop."""
        try:
            self._after_apply(items, outs, later)
        except Exception:
            log.exception("%s: fatal error applying entries (term %d); stopping", self.name, self.core.term)
            self._stopping.set()

    def _conf_applied(self, e: Entry) -> None:
        cc = ConfChange.decode(e.data)
        conf = self.core.apply_conf_change(cc)
        log.info("%s: applied conf change %s %s at index %d (term %d): voters %s learners %s", self.name,
                 cc.type.name.lower(), cc.node, e.index, e.term, ",".join(conf.voters), ",".join(conf.learners))
        if cc.type == ConfChangeType.REMOVE and cc.node == self.name:
            log.info("%s: removed from the cluster; stopping", self.name)
            self._stopping.set()

    def _wake_applied(self) -> None:
        if not self._applied_waiters:
            return
        keep = []
        for idx, fut in self._applied_waiters:
            if idx <= self.applied:
                if not fut.done():
                    fut.set_result(None)
            elif not fut.done():
                keep.append((idx, fut))
        self._applied_waiters = keep

    async def wait_applied(self, index: int, timeout: float) -> None:
        if self.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await asyncio.wait_for(fut, timeout)

    def _clients(self) -> int:
        resp = getattr(self, "resp", None)
        return int(resp.counters()["connected_clients"]) if resp is not None else 0

    def _unreachable(self, peer: str) -> None:
        self.core.report_unreachable(peer)

    def _address_of(self, name: str) -> str | None:
        addr = self.addresses.get(name)
        if addr is None and self.cfg.path:
            # A node added since we started: the operator added it to the cluster TOML.
            try:
                fresh = cfgmod.load(self.cfg.path)
            except KVError:
                return None
            for n in fresh.nodes:
                self.addresses.setdefault(n.name, n.grpc_address)
            addr = self.addresses.get(name)
        return addr

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.cfg.tls.enabled:
            return None
        from kvstore import tls

        return tls.channel_credentials(self.cfg, self.data_dir, self.name)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.cfg.tls.enabled:
            return None
        from kvstore import tls

        return tls.server_credentials(self.cfg, self.data_dir, self.name)

    # ---- reads (Backend) --------------------------------------------------------------

    async def read_barrier(self) -> None:
        if self._unsafe_local_reads:
            return  # test-only: the drills must catch this
        t0 = time.perf_counter()
        try:
            await self.reads.wait(self.timeout)
        except TryAgain:
            self.metrics.count("read_barrier", "tryagain")
            raise
        self.metrics.count("read_barrier", "ok", time.perf_counter() - t0)

    def get(self, key: bytes) -> bytes | None:
        v = self.cache.get(key)
        self.metrics.count("get", "ok")
        return v if v is not None else self.store.get(key)

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.store.scan(start=start, limit=limit)

    def count(self) -> int:
        return self.store.count()

    def info(self) -> dict[str, dict[str, Any]]:
        s = self.status()
        return {"replication": {"role": s["role"], "leader": s["leader"] or "", "term": s["term"],
                                "commit_index": s["commit_index"], "applied_index": s["applied_index"],
                                "voters": ",".join(s["voters"]), "learners": ",".join(s["learners"])},
                "cluster": {"cluster_id": self.cluster_id, "node": self.name},
                "storage": {"cache_name": self.cache_name, "store_path": str(self.home / "data"),
                            "applied_index": self.applied, "snapshot_index": self.snapshot_index}}

    # ---- status --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        first, last = self.store.log_bounds()
        return {
            "name": self.name, "cluster_id": self.cluster_id, "role": self.core.role.status_name,
            "term": self.core.term, "leader": self.core.leader, "commit_index": self.core.commit,
            "applied_index": self.applied, "applied_writes": self.applied_writes,
            "last_index": self.core.last_index,
            "snapshot_index": self.snapshot_index, "log_length": (last - first + 1) if last else 0,
            "voters": list(self.core.conf_state.voters), "learners": list(self.core.conf_state.learners),
            "socket": str(self.socket_path), "grpc": self.me.grpc_address,
            "metrics": f"http://{self.me.host}:{self.me.metrics_port}/metrics" if self._metrics_server else "",
            "proposals_in_flight": len(self._waiters),
        }

    async def change_member(self, op: str, name: str, address: str) -> ConfState:
        return await membership.change_member(self, op, name, address)

    async def transfer_leadership(self, to: str | None) -> str | None:
        return await membership.transfer_leadership(self, to)
