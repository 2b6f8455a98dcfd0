"""Membership changes and leadership transfer, driven on the leader.

One change at a time, each a single-server change (Raft thesis 4.1), effective when its
entry is appended: any two majorities of consecutive configurations overlap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kvstore.errors import KVError, TryAgain, Unavailable
from kvstore.raft import ConfChange, ConfChangeType, ConfState

if TYPE_CHECKING:
    from kvstore.node import Node

log = logging.getLogger("kvstore.node")


async def change_member(node: Node, op: str, name: str, address: str) -> ConfState:
    """Add a node (as a learner, then a voter once it caught up) or remove one.

    One change at a time, each a single-server change (Raft thesis 4.1): any two
    majorities of consecutive configurations overlap. A leader asked to remove itself
    hands leadership over first and says where to ask again.
    """
    if not node.core.is_leader:
        raise TryAgain(f"{node.name} is not the leader (leader: {node.core.leader or 'unknown'})")
    if address:
        node.addresses[name] = address
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    conf = node.core.conf_state
    if op == "add":
        if name in conf.voters:
            return conf
        if name not in conf.learners:
            log.info("%s: adding %s as a learner (term %d)", node.name, name, node.core.term)
            await node.propose_as_leader(ConfChange(ConfChangeType.ADD_LEARNER, name))
        while True:  # a voter that cannot keep up would only slow every commit down
            pr = node.core.status().get("progress", {}).get(name, {})
            if pr.get("match", 0) >= node.core.commit:
                break
            if loop.time() > deadline:
                raise Unavailable(f"{name} did not catch up within 60s; it stays a learner")
            if not node.core.is_leader:
                raise TryAgain("lost leadership while adding a node")
            await asyncio.sleep(0.05)
        log.info("%s: promoting %s to voter (term %d)", node.name, name, node.core.term)
        await node.propose_as_leader(ConfChange(ConfChangeType.PROMOTE, name))
    elif op == "remove":
        if name not in conf.voters and name not in conf.learners:
            return conf
        if name == node.name:
            new = await node.transfer_leadership(None)
            raise TryAgain(f"{node.name} handed leadership to {new}; ask it to remove {node.name}")
        log.info("%s: removing %s (term %d)", node.name, name, node.core.term)
        await node.propose_as_leader(ConfChange(ConfChangeType.REMOVE, name))
    else:
        raise KVError(f"unknown membership change {op!r}")
    return node.core.conf_state

async def transfer_leadership(node: Node, to: str | None) -> str | None:
    if node.core.role.status_name != "leader":
        return node.core.leader
    st = node.core.status()
    if to is None:
        prog = st.get("progress", {})
        cands = [v for v in node.core.conf_state.voters if v != node.name]
        if not cands:
            return node.name
        to = max(cands, key=lambda v: prog.get(v, {}).get("match", 0))
    node.core.transfer_leader(to)
    node._wake.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while loop.time() < deadline:
        if node.core.leader not in (None, node.name) and node.core.role.status_name != "leader":
            return node.core.leader
        await asyncio.sleep(0.01)
    raise TryAgain(f"leadership transfer to {to} did not finish in time")
