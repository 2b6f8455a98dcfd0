"""gRPC over loopback TCP, unary and bidirectional streaming.

The messages are the KV service's own (kvstore.v1.GetRequest / GetResponse, protobuf);
the service is a bench-only one registered with a generic handler, so no .proto of its
own is needed. Server and clients use grpc.aio, as the node does.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from kvstore.bench.ipc.base import Mechanism, Ready

SERVICE = "kvstore.bench.v1.Lookup"


def _handler(data: dict[bytes, bytes]) -> Any:
    import grpc

    from kvstore.rpc.pb import kv_pb2

    Resp = kv_pb2.GetResponse

    async def get(req: Any, ctx: Any) -> Any:
        v = data.get(req.key)
        return Resp(found=False) if v is None else Resp(found=True, value=v)

    async def stream(requests: Any, ctx: Any) -> Any:
        async for req in requests:
            v = data.get(req.key)
            yield Resp(found=False) if v is None else Resp(found=True, value=v)

    ser, de = kv_pb2.GetResponse.SerializeToString, kv_pb2.GetRequest.FromString
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Get": grpc.unary_unary_rpc_method_handler(get, request_deserializer=de, response_serializer=ser),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, request_deserializer=de, response_serializer=ser),
    })


class _Grpc(Mechanism):
    kind = "rpc"
    server_model = "grpc.aio server (asyncio + gRPC core threads)"
    streaming = False

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        import grpc

        async def main() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((_handler(data),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            ready(port)
            await server.wait_for_termination()

        asyncio.run(main())

    def connect(self, args: Any, info: Any) -> Any:
        return _GrpcConn(int(info), self.streaming)


class GrpcUnary(_Grpc):
    name = "grpc"
    title = "gRPC unary"


class GrpcStream(_Grpc):
    name = "grpc-stream"
    title = "gRPC stream"
    streaming = True


class _GrpcConn:
    """A grpc.aio client driven from synchronous code: its own event loop, run per call
    (get) or for a whole timed loop (bench), so the benchmark pays no loop entry per request."""

    def __init__(self, port: int, streaming: bool) -> None:
        import grpc

        from kvstore.rpc.pb import kv_pb2

        self._req = kv_pb2.GetRequest
        self._loop = asyncio.new_event_loop()
        self._streaming = streaming
        self._call: Any = None

        async def make() -> Any:
            return grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        self._channel = self._loop.run_until_complete(make())
        ser, de = kv_pb2.GetRequest.SerializeToString, kv_pb2.GetResponse.FromString
        self._unary = self._channel.unary_unary(f"/{SERVICE}/Get", request_serializer=ser,
                                                response_deserializer=de)
        self._stream = self._channel.stream_stream(f"/{SERVICE}/Stream", request_serializer=ser,
                                                   response_deserializer=de)

    async def _aget(self, key: bytes) -> bytes | None:
        if self._streaming:
            if self._call is None:
                self._call = self._stream()
            await self._call.write(self._req(key=key))
            r = await self._call.read()
        else:
            r = await self._unary(self._req(key=key))
        return r.value if r.found else None

    def get(self, key: bytes) -> bytes | None:
        return self._loop.run_until_complete(self._aget(key))

    async def _abench(self, keys: list[bytes], t_start: int, t_end: int) -> tuple[int, int, array[int]]:
        aget = self._aget
        lat: array[int] = array("q")
        add = lat.append
        clock = time.monotonic_ns
        mask = len(keys) - 1
        n = misses = 0
        t = clock()
        while t < t_end:
            v = await aget(keys[n & mask])
            add(clock() - t)
            if v is None:
                misses += 1
            n += 1
            t = clock()
        return n, misses, lat

    def bench(self, keys: list[bytes], t_start: int, t_end: int) -> tuple[int, int, array[int]]:
        return self._loop.run_until_complete(self._abench(keys, t_start, t_end))

    def close(self) -> None:
        async def shut() -> None:
            import grpc

            if self._call is not None:  # end the stream cleanly: the server sees the end, we its status
                await self._call.done_writing()
                while await self._call.read() is not grpc.aio.EOF:
                    pass
                await self._call.code()
            await self._channel.close()

        try:
            self._loop.run_until_complete(shut())
        finally:
            self._loop.close()
