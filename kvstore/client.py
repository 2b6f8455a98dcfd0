"""The local Python clients (RESP over the node's UNIX socket): see kvstore/local/client.py."""

from kvstore.local.client import AsyncClient, Client, RetryPolicy

__all__ = ["AsyncClient", "Client", "RetryPolicy"]
