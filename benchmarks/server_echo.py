"""The floor for the server benchmark: a bare echo gRPC server built like the PDP.

Same `grpc.server`, thread pool, options and listening code as `pdp serve`
(`pdp.server.app.build_grpc_server` and `bind`); its one method returns the request
bytes untouched, so what it costs per call is gRPC's own share.

    python -m benchmarks.server_echo [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import grpc

from pdp.server.app import bind, build_grpc_server
from pdp.server.config import load_config

METHOD = "/bench.Echo/Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--threads", type=int, default=None, help="as `pdp serve` threads")
    args = parser.parse_args(argv)
    flags: dict[str, object] = {"listen": args.listen}
    if args.threads:
        flags["threads"] = args.threads
    cfg = load_config(None, environ={}, flags=flags)
    server = build_grpc_server(cfg)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    port = bind(server, cfg)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"echo: listening on 127.0.0.1:{port}, pid {os.getpid()}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
