"""What the RESP server needs from a node: the seam between the local protocol and replication.

The server only parses requests and formats replies; everything that touches state goes
through a `Backend`. A single node without replication, the Raft node, and a worker
process that forwards to its node all implement this one protocol.

Optional, for the server's hot path (kvstore/local/fast.py), where `get` alone would cost
one LMDB transaction per cache miss:

- `cache_get(key) -> bytes | None`: the shared-memory cache alone (None: a miss), or the
  attribute None when there is no cache;
- `get_uncached(keys) -> list[bytes | None]`: local state for keys the cache missed, all
  in one read transaction;
- `cache_replies(keys) -> list[bytes | None]`: cache_get of each key, framed as a RESP
  bulk-string reply (None: a miss), for a read of nothing but GETs; `memo_reads` in
  fast.py makes one over a ShmCache (the memo in one comprehension). Without it the
  server calls cache_get per key.

Together they must answer what `get` would. SingleNodeBackend and the workers'
ForwardingBackend have them; a backend without them is read with `get`.
"""

from __future__ import annotations

from typing import Any, Protocol

from kvstore.statemachine import Command, Result


class Backend(Protocol):
    node_name: str

    async def write(self, cmd: Command) -> Result:
        """Replicate and apply one write; return its result once applied on this node.

        Raises TryAgain (nothing applied), Unknown (may have been applied),
        LimitExceeded, or KVError.
        """
        ...

    async def read_barrier(self) -> None:
        """Return once local state reflects every write committed before the call.

        This is what makes a read linearizable; raises TryAgain when it cannot.
        """
        ...

    def get(self, key: bytes) -> bytes | None:
        """Local state: the shared-memory cache, then LMDB."""
        ...

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Local state: up to `limit` pairs with key >= start, in key order."""
        ...

    def count(self) -> int: ...

    def info(self) -> dict[str, dict[str, Any]]:
        """INFO sections (name -> fields), e.g. {"replication": {"role": "leader", ...}}."""
        ...
