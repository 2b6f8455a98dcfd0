"""The slice of etcd's v3 gRPC API the benchmark needs: KV.Range and KV.Put.

Built at run time from a descriptor (field numbers and types as in etcd's
etcdserver/etcdserverpb/rpc.proto and mvcc/mvccpb/kv.proto), in a private descriptor pool:
no generated files, no protoc, and nothing registered where kvstore's own messages live.
Fields the benchmark never sets or reads are left out; protobuf skips them on the wire.
"""

from __future__ import annotations

from functools import cache
from typing import Any

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"


@cache
def messages() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="kvbench/etcd_kv_subset.proto", package="etcdserverpb",
                                             syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            label = F.LABEL_REPEATED if fname == "kvs" else F.LABEL_OPTIONAL
            f = m.field.add(name=fname, number=number, type=ftype, label=label)  # type: ignore[arg-type]
            if type_name:
                f.type_name = type_name

    message("ResponseHeader", ("cluster_id", 1, F.TYPE_UINT64, ""), ("member_id", 2, F.TYPE_UINT64, ""),
            ("revision", 3, F.TYPE_INT64, ""), ("raft_term", 4, F.TYPE_UINT64, ""))
    message("KeyValue", ("key", 1, F.TYPE_BYTES, ""), ("create_revision", 2, F.TYPE_INT64, ""),
            ("mod_revision", 3, F.TYPE_INT64, ""), ("version", 4, F.TYPE_INT64, ""),
            ("value", 5, F.TYPE_BYTES, ""), ("lease", 6, F.TYPE_INT64, ""))
    message("RangeRequest", ("key", 1, F.TYPE_BYTES, ""), ("range_end", 2, F.TYPE_BYTES, ""),
            ("limit", 3, F.TYPE_INT64, ""), ("revision", 4, F.TYPE_INT64, ""),
            ("serializable", 7, F.TYPE_BOOL, ""))
    message("RangeResponse", ("header", 1, F.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader"),
            ("kvs", 2, F.TYPE_MESSAGE, ".etcdserverpb.KeyValue"), ("more", 3, F.TYPE_BOOL, ""),
            ("count", 4, F.TYPE_INT64, ""))
    message("PutRequest", ("key", 1, F.TYPE_BYTES, ""), ("value", 2, F.TYPE_BYTES, ""),
            ("lease", 3, F.TYPE_INT64, ""), ("prev_kv", 4, F.TYPE_BOOL, ""))
    message("PutResponse", ("header", 1, F.TYPE_MESSAGE, ".etcdserverpb.ResponseHeader"),
            ("prev_kv", 2, F.TYPE_MESSAGE, ".etcdserverpb.KeyValue"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{name}"))
            for name in ("RangeRequest", "RangeResponse", "PutRequest", "PutResponse")}


def stubs(channel: Any) -> tuple[Any, Any]:
    """(range, put) multi-callables on a grpc (or grpc.aio) channel."""
    m = messages()
    rng = channel.unary_unary(RANGE, request_serializer=m["RangeRequest"].SerializeToString,
                              response_deserializer=m["RangeResponse"].FromString)
    put = channel.unary_unary(PUT, request_serializer=m["PutRequest"].SerializeToString,
                              response_deserializer=m["PutResponse"].FromString)
    return rng, put
