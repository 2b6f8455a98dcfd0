"""The node's durable state in one LMDB environment: data, Raft log, hard state, meta.

See `store.py` for the layout and `env.py` for map growth and error handling.
"""

from kvstore.storage.codec import MAX_KEY_SIZE
from kvstore.storage.env import SnapshotInterrupted
from kvstore.storage.store import Store, WriteTxnView

__all__ = ["MAX_KEY_SIZE", "SnapshotInterrupted", "Store", "WriteTxnView"]
