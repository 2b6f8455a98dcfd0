"""`kvstore bench cluster`: our 3-node cluster under 1..256 concurrent clients, over RESP and
gRPC, beside redis-server and a 3-node etcd (`--peers`) driven with the same patterns."""
