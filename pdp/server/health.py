"""gRPC health checking (`grpc.health.v1`), its status set from any thread.

On the `grpc.aio` server the servicer must be grpcio's asyncio one: the plain one
answers `Watch` by holding a pool thread until the stream ends, and a watcher that
goes away without the stream ending holds it for good (16 of them took every thread
and calls timed out; a server with one open at SIGTERM never exited). The statuses
are kept here as well, so whichever servicer is attached starts with them.

At shutdown every Watch stream is told NOT_SERVING and then ended (status OK): an
open stream is an RPC in flight, and the server's drain would otherwise wait the
whole grace period for watchers that never hang up (a load balancer's, typically).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, cast

import grpc
import grpc.aio
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger("pdp.server")

SERVICE_NAME = health.SERVICE_NAME
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Ended(Exception):
    """Raised out of a Watch loop once its last status has been sent."""


class _Written:
    """A Watch call's context that remembers the last status written, and ends the
    stream (raising `_Ended`) after a final status written once shutdown has begun:
    anything but SERVING, which can only be one already on its way (the loop then
    waits, is told NOT_SERVING, writes it and ends)."""

    def __init__(self, context: Any, servicer: _AioServicer) -> None:
        self._context = context
        self._servicer = servicer
        self.last: int | None = None

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(response)
        self.last = response.status
        if self._servicer.ending and response.status != SERVING:
            raise _Ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _AioServicer(health_async.HealthServicer):
    """grpcio's asyncio servicer, with Watch streams that end at shutdown."""

    def __init__(self) -> None:
        super().__init__()
        self.ending = False
        self._watches: dict[asyncio.Task[Any], _Written] = {}

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802
        task = asyncio.current_task()
        assert task is not None
        written = self._watches[task] = _Written(context, self)
        try:
            await super().Watch(request, cast(Any, written))  # duck-typed: only write()
        except _Ended:
            pass  # the last word was said: the stream ends with OK
        except asyncio.CancelledError:
            if not self.ending:
                raise  # the watcher went away
        finally:
            del self._watches[task]

    async def end(self) -> None:
        """NOT_SERVING for good, sent on every stream, then every stream ended."""
        self.ending = True
        await self.enter_graceful_shutdown()
        for task, written in list(self._watches.items()):
            # Streams that last said SERVING (or nothing yet) are sending their final
            # status now and end by themselves; the others (NOT_SERVING, or
            # SERVICE_UNKNOWN) see no change to send, and would wait for good.
            if written.last is not None and written.last != SERVING:
                task.cancel()


class _SyncServicer(health.HealthServicer):
    """grpcio's thread-pool servicer, with Watch streams that end at shutdown."""

    def __init__(self) -> None:
        super().__init__()
        self._ending = False
        self._ended: set[Any] = set()  # senders already sent their end

    def Watch(  # noqa: N802
        self,
        request: health_pb2.HealthCheckRequest,
        context: Any,
        send_response_callback: Any = None,
    ) -> Any:
        watcher = super().Watch(request, context, send_response_callback)
        if self._ending:
            # Opened during the drain (a health client reconnects as soon as its stream
            # ends): its status again, in case shutdown began after it was read, then
            # the end. Left open, it would hold the drain for the whole grace period.
            self._end_streams(final_status=True)
        return watcher

    def end(self) -> None:
        """NOT_SERVING for good, queued on every stream, then every stream ended."""
        self._ending = True
        self.enter_graceful_shutdown()
        self._end_streams(final_status=False)

    def _end_streams(self, *, final_status: bool) -> None:
        # grpcio keeps each stream's sender in these (not in its type stubs), and its
        # statuses; sending None ends a stream after what is queued
        # (tests/server/test_health.py holds grpcio to that).
        lock: threading.RLock = self._lock  # type: ignore[attr-defined]
        groups: dict[str, set[Any]] = self._send_response_callbacks  # type: ignore[attr-defined]
        statuses: dict[str, int] = self._server_status  # type: ignore[attr-defined]
        with lock:
            ending = [
                (send, statuses.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN))
                for service, group in groups.items()
                for send in group
                if send not in self._ended
            ]
            self._ended.update(send for send, _ in ending)
        for send, status in ending:
            if final_status:
                send(health_pb2.HealthCheckResponse(status=status))
            send(None)


class Health:
    """The serving status of each service name; `attach` it to the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, int] = {}
        self._sync: _SyncServicer | None = None
        self._aio: _AioServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(
        self, server: grpc.Server | grpc.aio.Server, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Serve health on `server`: asyncio's servicer on `loop` for a grpc.aio server
        (call on that loop), else the thread-pool one."""
        with self._lock:
            if isinstance(server, grpc.aio.Server):
                assert loop is not None
                self._aio, self._loop = _AioServicer(), loop
                servicer: health_pb2_grpc.HealthServicer = self._aio
            else:
                self._sync = servicer = _SyncServicer()
            for name, status in self._status.items():
                self._apply(name, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    def set(self, name: str, status: int) -> None:
        """Set the status of service `name` ("" for the server as a whole)."""
        with self._lock:
            self._status[name] = status
            self._apply(name, status)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good: set before the port closes, so balancers look away;
        Watch streams are told, then ended."""
        with self._lock:
            for name in self._status:
                self._status[name] = NOT_SERVING
            if self._sync is not None:
                self._sync.end()
            if self._aio is not None:
                self._run(self._aio.end())

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
            loop.create_task(step).add_done_callback(_log_failure)
        elif loop.is_closed():
            step.close()
        else:
            asyncio.run_coroutine_threadsafe(step, loop).add_done_callback(_log_failure)


def _log_failure(done: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
    """Run without anyone waiting for it: a failure would otherwise go unseen."""
    if not done.cancelled() and done.exception() is not None:
        log.error("health: setting a status failed", exc_info=done.exception())
