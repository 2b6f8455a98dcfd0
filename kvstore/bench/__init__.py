"""`kvstore bench`: measured comparisons.

- `ipc/`: one request (get a 100-byte value by key, served by a second process) over each
  local IPC mechanism and each RPC stack: latency, throughput, CPU per request.
- `cluster/`: our 3-node cluster under 1..256 concurrent clients (RESP and gRPC), beside
  redis-server and a 3-node etcd when they are installed.

`common.py` holds what both share: the data set, percentiles, CPU accounting and the
helpers that keep child processes from outliving the benchmark.
"""
