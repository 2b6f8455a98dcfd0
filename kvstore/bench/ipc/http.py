"""HTTP/1.1 RPC from the standard library: JSON-RPC 2.0 and XML-RPC, keep-alive, loopback.

Both servers are the standard library's threading servers (a thread per connection),
with Nagle off so that headers and body written apart do not wait for a delayed ACK.
Values are binary, so they travel as base64 (JSON) or <base64> (XML-RPC): the encoding
cost is part of what these rows measure.
"""

from __future__ import annotations

import base64
import http.client
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kvstore.bench.ipc.base import Mechanism, Ready


class JsonRpc(Mechanism):
    name = "jsonrpc"
    title = "JSON-RPC/HTTP"
    kind = "rpc"
    server_model = "http.server ThreadingHTTPServer (thread per connection)"

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = json.loads(body)
                if req.get("method") == "get":
                    v = data.get(req["params"]["key"].encode())
                    out = {"jsonrpc": "2.0", "id": req.get("id"),
                           "result": None if v is None else base64.b64encode(v).decode()}
                else:
                    out = {"jsonrpc": "2.0", "id": req.get("id"),
                           "error": {"code": -32601, "message": "Method not found"}}
                payload = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        ready(server.server_address[1])
        server.serve_forever()

    def connect(self, args: Any, info: Any) -> Any:
        return _JsonRpcConn(int(info))


class _JsonRpcConn:
    def __init__(self, port: int) -> None:
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._id = 0

    def get(self, key: bytes) -> bytes | None:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "method": "get", "params": {"key": key.decode()}, "id": self._id})
        self._http.request("POST", "/", body, {"Content-Type": "application/json"})
        resp = json.loads(self._http.getresponse().read())
        if "error" in resp:
            raise RuntimeError(resp["error"]["message"])
        r = resp["result"]
        return None if r is None else base64.b64decode(r)

    def close(self) -> None:
        self._http.close()


class XmlRpc(Mechanism):
    name = "xmlrpc"
    title = "XML-RPC"
    kind = "rpc"
    server_model = "SimpleXMLRPCServer + ThreadingMixIn (thread per connection)"

    def serve(self, args: Any, data: dict[bytes, bytes], ready: Ready) -> None:
        import socketserver
        import xmlrpc.client
        from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

        class Handler(SimpleXMLRPCRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's Transport expects
            disable_nagle_algorithm = True

        class Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
            daemon_threads = True

        def get(key: Any) -> Any:
            v = data.get(key.encode())
            return None if v is None else xmlrpc.client.Binary(v)

        server = Server(("127.0.0.1", 0), requestHandler=Handler, logRequests=False, allow_none=True)
        server.register_function(get, "get")
        ready(server.server_address[1])
        server.serve_forever()

    def connect(self, args: Any, info: Any) -> Any:
        return _XmlRpcConn(int(info))


class _XmlRpcConn:
    def __init__(self, port: int) -> None:
        import xmlrpc.client

        self._proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2", allow_none=True)

    def get(self, key: bytes) -> bytes | None:
        r = self._proxy.get(key.decode())
        return None if r is None else bytes(r.data)  # type: ignore[union-attr]

    def close(self) -> None:
        self._proxy("close")()
