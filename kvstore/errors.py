"""Errors shared by every layer, each carrying the CLI exit code of the contract.

0 ok; 1 key absent or a check failed; 2 usage error; 3 unavailable; 4 any other error.
"""

from __future__ import annotations


class KVError(Exception):
    """Base of every error kvstore reports to a user; the message is one clear line."""

    exit_code = 4


class NotFound(KVError):
    exit_code = 1


class CheckFailed(KVError):
    exit_code = 1


class UsageError(KVError):
    exit_code = 2


class Unavailable(KVError):
    """The cluster could not serve in time (no leader, timeout, node down)."""

    exit_code = 3


class TryAgain(Unavailable):
    """Nothing was applied; the request may be retried as is."""


class Unknown(Unavailable):
    """A write may or may not have been applied."""


class StorageError(KVError):
    """LMDB refused an operation (disk full, map growth refused, corruption)."""


class StorageFull(StorageError):
    pass


class LimitExceeded(KVError):
    """A key, value or request over a configured limit."""


class WrongCluster(KVError):
    """A peer, message or data directory belongs to another cluster."""
