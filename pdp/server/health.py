"""gRPC health checking (`grpc.health.v1`), its status set from any thread.

On the `grpc.aio` server the servicer must be grpcio's asyncio one: the plain one
answers `Watch` by holding a pool thread until the stream ends, and a watcher that
goes away without the stream ending holds it for good (16 of them took every thread
and calls timed out; a server with one open at SIGTERM never exited). The statuses
are kept here as well, so whichever servicer is attached starts with them.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import grpc.aio
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE_NAME = health.SERVICE_NAME
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The serving status of each service name; `attach` it to the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, int] = {}
        self._sync: health.HealthServicer | None = None
        self._aio: health_async.HealthServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(
        self, server: grpc.Server | grpc.aio.Server, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Serve health on `server`: asyncio's servicer on `loop` for a grpc.aio server
        (call on that loop), else the thread-pool one."""
        with self._lock:
            if isinstance(server, grpc.aio.Server):
                assert loop is not None
                self._aio, self._loop = health_async.HealthServicer(), loop
                servicer: health_pb2_grpc.HealthServicer = self._aio
            else:
                self._sync = servicer = health.HealthServicer()
            for name, status in self._status.items():
                self._apply(name, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    def set(self, name: str, status: int) -> None:
        """Set the status of service `name` ("" for the server as a whole)."""
        with self._lock:
            self._status[name] = status
            self._apply(name, status)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good: set before the port closes, so balancers look away."""
        with self._lock:
            for name in self._status:
                self._status[name] = NOT_SERVING
            if self._sync is not None:
                self._sync.enter_graceful_shutdown()
            if self._aio is not None:
                self._run(self._aio.enter_graceful_shutdown())

    def _apply(self, name: str, status: int) -> None:
        if self._sync is not None:
            self._sync.set(name, status)
        if self._aio is not None:
            self._run(self._aio.set(name, status))

    def _run(self, step: object) -> None:
        """Run a coroutine of the asyncio servicer on its loop, from any thread."""
        loop = self._loop
        assert loop is not None and asyncio.iscoroutine(step)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(step)
        elif loop.is_closed():
            step.close()
        else:
            asyncio.run_coroutine_threadsafe(step, loop)
