"""The leader's write futures (kvstore/writepath.py): no write is left waiting forever."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from kvstore import statemachine as sm
from kvstore.errors import TryAgain, Unknown
from kvstore.raft import NotLeader
from kvstore.writepath import WritePath


class _Core:
    def __init__(self) -> None:
        self.term = 2
        self.index = 5
        self.is_leader = True
        self.proposed: list[bytes] = []

    def propose(self, data: bytes) -> int:
        if not self.is_leader:
            raise NotLeader(None)
        self.proposed.append(data)
        return self.index


class _Leader(WritePath):
    def __init__(self) -> None:
        self.name = "n1"
        self.core: Any = _Core()
        self.counted: list[tuple[str, str]] = []
        self.metrics: Any = SimpleNamespace(proposals=SimpleNamespace(inc=lambda n=1: None),
                                            count=lambda name, outcome, s=None: self.counted.append((name, outcome)))
        self._loop = asyncio.get_running_loop()
        self._batch = []
        self._batch_bytes = 0
        self.timeout = 5.0
        self._waiters = {}
        self._expiry = deque()
        self._expiry_odd = []
        self._expiry_seq = itertools.count()
        self._wake = asyncio.Event()


def test_a_reused_index_fails_the_old_write_and_its_deadline_spares_the_new_one() -> None:
    async def main() -> None:
        lead, now = _Leader(), asyncio.get_running_loop().time()
        first = lead.propose_future(sm.Set(b"k", b"1"), timeout=1.0)
        # leadership lost and won back: the entry at 5 was overwritten, 5 is proposed again
        lead.core.term = 4
        second = lead.propose_future(sm.Set(b"k", b"2"))
        await asyncio.sleep(0)  # the end of this turn of the loop: the batch is proposed
        assert isinstance(first.exception(), TryAgain)
        lead._expire_waiters(now + 2)  # the first write's deadline: the second must survive it
        assert not second.done() and lead._waiters[5][0] == 4 and lead._waiters[5][1].futs == [second]
        lead._expire_waiters(now + 6)
        with pytest.raises(Unknown, match="not committed within 5.0s"):
            second.result()
        assert 5 not in lead._waiters

    asyncio.run(main())


def test_writes_of_one_turn_share_one_entry_in_order_and_a_lost_leader_fails_them_all() -> None:
    async def main() -> None:
        lead = _Leader()
        cmds = [sm.Set(b"a", b"1"), sm.Delete((b"a", b"b")), sm.Set(b"c", b"3", nx=True)]
        futs = [lead.propose_future(c) for c in cmds]
        assert lead.core.proposed == []  # not before the end of the turn
        await asyncio.sleep(0)
        [entry] = lead.core.proposed
        assert entry[0] == sm.OP_BATCH and sm.decode_entry(entry) == cmds
        assert lead._waiters[5][1].futs == futs
        lone = lead.propose_future(sm.Set(b"x", b"y"))
        await asyncio.sleep(0)
        assert lead.core.proposed[-1] == sm.encode(sm.Set(b"x", b"y"))  # one write: no BATCH
        assert not lone.done()
        lead.core.is_leader = False
        with pytest.raises(TryAgain):
            lead.propose_future(sm.Set(b"k", b"v"))  # refused at once: the caller forwards it
        lead.core.is_leader = True
        queued = [lead.propose_future(sm.Set(b"k%d" % i, b"v")) for i in range(3)]
        lead.core.is_leader = False  # lost before the end of the turn
        await asyncio.sleep(0)
        assert all(isinstance(f.exception(), TryAgain) for f in queued)

    asyncio.run(main())


def test_a_full_batch_is_proposed_at_once() -> None:
    from kvstore.writepath import MAX_BATCH

    async def main() -> None:
        lead = _Leader()
        for i in range(MAX_BATCH + 1):
            lead.propose_future(sm.Set(b"k%d" % i, b"v"))
        assert len(lead.core.proposed) == 1 and len(sm.decode_entry(lead.core.proposed[0]) or []) == MAX_BATCH
        lead.core.index = 6
        await asyncio.sleep(0)
        assert len(lead.core.proposed) == 2

    asyncio.run(main())


def test_a_submitted_write_resolves_with_its_result_and_is_counted_once() -> None:
    async def main() -> None:
        lead = _Leader()
        lead.cfg = SimpleNamespace(limits=SimpleNamespace(max_key=511, max_value=1 << 20))
        ok = lead.submit_write(sm.Set(b"a", b"1"))
        proposed = lead.propose_future(sm.Delete((b"a",)))
        await asyncio.sleep(0)
        _, pending = lead._waiters.pop(5)  # applied (as Node._after_apply does)
        lead.settle(pending, 5, [sm.SET_DONE, 1], None)
        assert ok.result() == sm.SET_DONE and proposed.result() == (1, 5)
        lead.core.index = 6
        late = lead.submit_write(sm.Set(b"b", b"2"))
        await asyncio.sleep(0)
        lead._expire_waiters(asyncio.get_running_loop().time() + 6)
        with pytest.raises(Unknown):
            late.result()
        lead._expire_waiters(asyncio.get_running_loop().time() + 12)  # nothing left, nothing counted twice
        assert lead.counted == [("set", "ok"), ("set", "unknown")]

    asyncio.run(main())


def test_a_forwarded_batch_is_answered_after_the_local_apply_and_a_bad_answer_fails_it() -> None:
    """Forwarder._settle runs beside the forwarding loop: each write gets its result once
    this node applied the leader's index, and a batch whose answer cannot be read fails
    UNKNOWN instead of leaving its clients waiting."""
    from kvstore.forward import Forwarder
    from kvstore.rpc.pb import raft_pb2 as pb

    async def go() -> None:
        applied: list[int] = []
        gate = asyncio.Event()

        async def wait_applied(index: int, timeout: float) -> None:
            await gate.wait()
            applied.append(index)

        node = SimpleNamespace(name="n2", wait_applied=wait_applied)
        fw = Forwarder(node)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        try:
            futs = [loop.create_future() for _ in range(3)]
            batch: list[Any] = [(sm.Set(b"k", b"v", False, False, False), f, loop.time() + 5) for f in futs]
            ok = sm.encode_result(sm.SetResult(True, None))
            resp = pb.ProposeResponse(results=[
                pb.ProposeResult(status=pb.ProposeResult.APPLIED, result=ok, index=7),
                pb.ProposeResult(status=pb.ProposeResult.NOT_APPLIED, error="dropped"),
            ])
            task = asyncio.ensure_future(fw._settle(batch, resp, loop.time() + 5))
            await asyncio.sleep(0.01)
            assert not any(f.done() for f in futs), "answered before the local apply"
            gate.set()
            await task
            assert applied == [7]
            assert futs[0].result() == sm.SetResult(True, None)
            assert isinstance(futs[1].exception(), TryAgain)
            assert isinstance(futs[2].exception(), Unknown)  # the answer had no third result

            bad = [loop.create_future()]
            resp = pb.ProposeResponse(results=[pb.ProposeResult(status=pb.ProposeResult.APPLIED, result=b"?", index=8)])
            await fw._settle([(sm.Set(b"k", b"v", False, False, False), bad[0], loop.time() + 5)], resp,
                             loop.time() + 5)
            assert isinstance(bad[0].exception(), Unknown)
        finally:
            await fw.close()

    asyncio.run(go())
