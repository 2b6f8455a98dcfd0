"""A gRPC client of service KV, for remote clients (`--endpoint HOST:PORT`), drills and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from kvstore.errors import KVError, LimitExceeded, TryAgain, Unavailable, Unknown, WrongCluster
from kvstore.rpc.pb import kv_pb2 as kvpb
from kvstore.rpc.pb import kv_pb2_grpc as kvpbg


def _error(e: grpc.RpcError, where: str) -> KVError:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if details.startswith("TRYAGAIN"):
            return TryAgain(details[9:] or "try again")
        return Unavailable(f"{where} is unreachable: {details}")
    if code == grpc.StatusCode.UNKNOWN:
        return Unknown(details.removeprefix("UNKNOWN ") or "outcome unknown")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unknown(f"{where} did not answer in time")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return LimitExceeded(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return WrongCluster(details)
    return KVError(f"{where}: {code.name.lower() if code else 'error'}: {details}")


class GrpcClient:
    def __init__(self, endpoint: str, *, timeout: float = 10.0, channel: grpc.Channel | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = channel or grpc.insecure_channel(endpoint)
        self.stub = kvpbg.KVStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _consistency(linearizable: bool) -> kvpb.Consistency:
        return kvpb.LINEARIZABLE if linearizable else kvpb.LOCAL

    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        try:
            r = self.stub.Get(kvpb.GetRequest(key=key, consistency=self._consistency(linearizable)),
                              timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(e, self.endpoint) from None
        return r.value if r.found else None

    def put(self, key: bytes, value: bytes, *, nx: bool = False, xx: bool = False,
            get: bool = False) -> tuple[bool, bytes | None]:
        try:
            r = self.stub.Put(kvpb.PutRequest(key=key, value=value, if_absent=nx, if_present=xx, return_old=get),
                              timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(e, self.endpoint) from None
        return r.applied, (r.old if r.had_old else None)

    def delete(self, *keys: bytes) -> int:
        try:
            return int(self.stub.Delete(kvpb.DeleteRequest(keys=list(keys)), timeout=self.timeout).deleted)
        except grpc.RpcError as e:
            raise _error(e, self.endpoint) from None

    def scan(self, prefix: bytes = b"", *, limit: int | None = None,
             linearizable: bool = True) -> Iterator[tuple[bytes, bytes]]:
        start = b""
        n = 0
        while True:
            page = 1000 if limit is None else min(1000, limit - n)
            if page <= 0:
                return
            try:
                r = self.stub.Scan(kvpb.ScanRequest(prefix=prefix, start=start, limit=page,
                                                    consistency=self._consistency(linearizable)),
                                   timeout=self.timeout)
            except grpc.RpcError as e:
                raise _error(e, self.endpoint) from None
            for it in r.items:
                yield it.key, it.value
                n += 1
            if not r.next:
                return
            start = r.next
