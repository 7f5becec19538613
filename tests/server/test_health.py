"""gRPC health checking through the real server: Watch streams hold no thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.server.app import PdpServer
from pdp.server.health import SERVING, _AioServicer
from tests.server.support import (
    drain_output,
    health_status,
    server_config,
    start_process,
    thread_pool_settings,
    wait_for,
)


def _watch(target: str) -> tuple[grpc.Channel, grpc.Future]:  # type: ignore[type-arg]
    channel = grpc.insecure_channel(target)
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    next(stream)  # the first status: the stream is open on the server
    return channel, stream


def test_watchers_that_go_away_hold_no_thread(policy_dir: Path, bindings_file: Path) -> None:
    # Twice as many watchers as threads, each cancelled: with a servicer that holds a
    # pool thread per stream, health checks then found no thread and timed out.
    cfg = server_config(policy_dir, {"store.bindings_file": str(bindings_file), "threads": 2})
    server = PdpServer(cfg)
    port = server.start()
    target = f"127.0.0.1:{port}"
    try:
        for _ in range(4):
            channel, stream = _watch(target)
            stream.cancel()
            channel.close()
        open_ones = [_watch(target) for _ in range(4)]  # and some left open
        assert health_status(target) == "SERVING"
        for channel, _ in open_ones:
            channel.close()
    finally:
        server.stop(0.5)


def test_an_open_watch_does_not_keep_the_process_from_exiting(
    policy_dir: Path, tmp_path: Path
) -> None:
    records = tmp_path / "records.jsonl"
    proc = start_process(["-m", "tests.server.slow_server", str(policy_dir), str(records), "0"])
    target = f"127.0.0.1:{proc.port}"
    try:
        channel, stream = _watch(target)
        statuses: list[int] = []

        def read() -> None:
            try:
                for r in stream:  # type: ignore[attr-defined]
                    statuses.append(r.status)
            except grpc.RpcError:
                pass  # the server went away: the stream ends

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: serving in statuses, what="SERVING on the stream")
        proc.terminate()
        assert proc.wait(20) == 0, drain_output(proc)
        reader.join(5)
        # The watcher was told, before the port closed.
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
        channel.close()
    finally:
        proc.kill()


def _server(policy_dir: Path, bindings_file: Path, tmp_path: Path, on_loop: bool) -> PdpServer:
    flags: dict[str, object] = {"store.bindings_file": str(bindings_file), "grace_seconds": 10.0}
    if not on_loop:
        flags |= thread_pool_settings(tmp_path)
    server = PdpServer(server_config(policy_dir, flags))
    server.start()
    assert server.on_loop is on_loop
    return server


@pytest.mark.parametrize("on_loop", [True, False], ids=["grpc.aio", "thread pool"])
def test_open_watches_are_told_and_ended_at_stop_without_waiting_out_the_grace(
    policy_dir: Path, bindings_file: Path, tmp_path: Path, on_loop: bool
) -> None:
    server = _server(policy_dir, bindings_file, tmp_path, on_loop)
    port = server.port
    target = f"127.0.0.1:{port}"
    watchers = [_watch(target) for _ in range(3)]
    statuses: list[list[int]] = [[] for _ in watchers]
    ended: list[str] = []

    def read(i: int) -> None:
        try:
            for r in watchers[i][1]:  # type: ignore[attr-defined]
                statuses[i].append(r.status)
            ended.append("OK")
        except grpc.RpcError as exc:
            ended.append(exc.code().name)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
    for t in readers:
        t.start()
    # One watcher asks about a service with no status: it has heard SERVICE_UNKNOWN
    # already and nothing changes for it at shutdown, so it is simply ended.
    unknown = health_pb2_grpc.HealthStub(watchers[0][0]).Watch(
        health_pb2.HealthCheckRequest(service="no.such.Service")
    )
    first = next(unknown)
    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    started = time.monotonic()
    server.stop()  # the configured grace: 10 s
    took = time.monotonic() - started
    for t in readers:
        t.join(5)
    assert took < 5, f"stop() waited {took:.1f} s for the open Watch streams"
    assert ended == ["OK"] * 3, ended
    for seen in statuses:
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
    with pytest.raises(StopIteration):
        next(unknown)  # ended with OK, not cut off
    for channel, _ in watchers:
        channel.close()


@pytest.mark.parametrize("on_loop", [True, False], ids=["grpc.aio", "thread pool"])
def test_a_watcher_that_reconnects_during_the_drain_does_not_hold_it(
    policy_dir: Path, bindings_file: Path, tmp_path: Path, on_loop: bool
) -> None:
    # Health clients (gRPC's client-side health checking, Envoy) open a new Watch as
    # soon as a stream ends, while the port is still open: those must end too.
    server = _server(policy_dir, bindings_file, tmp_path, on_loop)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    streams: list[list[int]] = []
    done = threading.Event()

    def watcher() -> None:
        while not done.is_set():
            seen: list[int] = []
            streams.append(seen)
            try:
                for r in stub.Watch(health_pb2.HealthCheckRequest()):
                    seen.append(r.status)
            except grpc.RpcError:
                return  # the port closed
            if not seen:
                return

    reader = threading.Thread(target=watcher, daemon=True)
    reader.start()
    wait_for(lambda: bool(streams and streams[0]), what="the first status")
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    done.set()
    reader.join(5)
    channel.close()
    assert took < 5, f"stop() waited {took:.1f} s for Watch streams opened during the drain"
    assert len(streams) >= 2, streams  # it tried again once its stream ended
    # Each stream that got anything ended on NOT_SERVING. (Whether a reconnection
    # came before the port closed depends on timing; on the thread-pool server one
    # that did held stop() for the whole grace period.)
    answered = [seen for seen in streams if seen]
    assert answered[0][0] == SERVING
    assert all(seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING for seen in answered)


def test_a_serving_status_in_flight_at_shutdown_is_followed_by_not_serving() -> None:
    # The Watch holds its lock while writing SERVING; shutdown's NOT_SERVING waits for
    # it. The stream must not end on that SERVING.
    class Slow:
        def __init__(self) -> None:
            self.sent: list[int] = []
            self.gate = asyncio.Event()

        async def write(self, response: health_pb2.HealthCheckResponse) -> None:
            await self.gate.wait()  # on the wire
            self.sent.append(response.status)

    async def scenario() -> list[int]:
        servicer = _AioServicer()
        await servicer.set("", SERVING)
        context: Any = Slow()
        watch = asyncio.create_task(servicer.Watch(health_pb2.HealthCheckRequest(), context))
        await asyncio.sleep(0)  # writing SERVING
        end = asyncio.create_task(servicer.end())
        await asyncio.sleep(0)
        context.gate.set()
        await asyncio.wait_for(watch, 5)
        await asyncio.wait_for(end, 5)
        return list(context.sent)

    sent = asyncio.run(scenario())
    assert sent == [SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
