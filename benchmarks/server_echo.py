"""The floor for the server benchmark: a bare echo gRPC server built like the PDP.

Same `grpc.aio` server, options and listening code as `pdp serve`
(`pdp.server.app.build_grpc_server` and `bind`), and like the PDP's decision calls
its one method is a coroutine answered on the event loop; it returns the request
bytes untouched, so what it costs per call is gRPC's own share.

With `--append DIR` each call also appends one 1 KB line to a file opened `O_DSYNC`
and is answered once it is on disk, group-committed the way the durable audit log
writes (a writer thread, one write per batch, the loop woken once per batch): the
floor under what `durable` costs, with no record to build.

    python -m benchmarks.server_echo [--listen 127.0.0.1:0] [--append DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from pdp.server.app import bind, build_grpc_server, thread_pool
from pdp.server.config import ServerConfig, load_config

METHOD = "/bench.Echo/Echo"


Echo = Callable[[bytes, "grpc.aio.ServicerContext[bytes, bytes]"], Awaitable[bytes]]
LINE = b"x" * 1023 + b"\n"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def _appending_echo(directory: Path) -> Echo:
    """Echo after a durable 1 KB append, group-committed by a writer thread."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "echo.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC)
    loop = asyncio.get_running_loop()
    cond = threading.Condition()
    queue: list[asyncio.Future[None]] = []

    def resolve(futures: list[asyncio.Future[None]]) -> None:
        for f in futures:
            f.set_result(None)

    def writer() -> None:
        while True:
            with cond:
                while not queue:
                    cond.wait()
                batch = queue[:]
                queue.clear()
            os.write(fd, LINE * len(batch))
            loop.call_soon_threadsafe(resolve, batch)

    threading.Thread(target=writer, name="echo-writer", daemon=True).start()

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        done = loop.create_future()
        with cond:
            queue.append(done)
            cond.notify()
        await done
        return request

    return echo


async def _serve(cfg: ServerConfig, append: Path | None) -> None:
    server = build_grpc_server(cfg, executor=thread_pool(cfg))
    echo = _echo if append is None else _appending_echo(append)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=None, response_serializer=None
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
    parser.add_argument("--append", type=Path, help="append 1 KB per call durably, in DIR")
    args = parser.parse_args(argv)
    flags: dict[str, object] = {"listen": args.listen}
    if args.threads:
        flags["threads"] = args.threads
    asyncio.run(_serve(load_config(None, environ={}, flags=flags), args.append))
    return 0


if __name__ == "__main__":
    sys.exit(main())
