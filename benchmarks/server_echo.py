"""The floor for the server benchmark: a bare echo gRPC server built like the PDP.

Same `grpc.aio` server, options and listening code as `pdp serve`
(`pdp.server.app.build_grpc_server` and `bind`), and like the PDP's decision calls
its one method is a coroutine answered on the event loop; it returns the request
bytes untouched, so what it costs per call is gRPC's own share.

    python -m benchmarks.server_echo [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import grpc

from pdp.server.app import bind, build_grpc_server, thread_pool
from pdp.server.config import ServerConfig, load_config

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _serve(cfg: ServerConfig) -> None:
    server = build_grpc_server(cfg, executor=thread_pool(cfg))
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    port = bind(server, cfg)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"echo: listening on 127.0.0.1:{port}, pid {os.getpid()}", flush=True)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--threads", type=int, default=None, help="as `pdp serve` threads")
    args = parser.parse_args(argv)
    flags: dict[str, object] = {"listen": args.listen}
    if args.threads:
        flags["threads"] = args.threads
    asyncio.run(_serve(load_config(None, environ={}, flags=flags)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
