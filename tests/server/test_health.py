"""gRPC health checking through the real server: Watch streams hold no thread."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.server.app import PdpServer
from tests.server.support import (
    drain_output,
    health_status,
    server_config,
    start_process,
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
