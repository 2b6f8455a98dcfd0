"""Local access to a node: the RESP server on its UNIX socket, and the Python clients.

- `server.RespServer`: RESP2/RESP3 over a UNIX socket (redis-cli, redis-py and
  redis-benchmark work unchanged); `connection.py` runs one client connection,
  `framing.py` turns bytes into requests (hiredis + size checks), `commands.py` and
  `introspect.py` answer them, `resp.py` encodes replies and holds the `Limits`.
- `backend.Backend`: all the server needs from a node; `single.SingleNodeBackend` is a
  node without replication, `workers.ForwardingBackend` a worker process's view of one.
- `workers.WorkerPool`: more processes on the same socket (more cores for reads).
- `client.Client` / `client.AsyncClient`: the Python clients, with an optional
  shared-memory fast path for reads.
"""
