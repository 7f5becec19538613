"""`--workers N`: N serving processes on one port (SO_REUSEPORT), one supervisor.

Python answers calls on one core per process; the kernel spreads new connections
over processes that share a port with SO_REUSEPORT. The supervisor starts the
workers with the `spawn` method (gRPC must not be forked once started), forwards
SIGTERM/SIGINT to them, restarts a worker that dies on its own, and exits 0 when
every worker drained and exited 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from pdp.server.config import ServerConfig

log = logging.getLogger("pdp.server")

# A worker that dies within this many seconds of starting is not restarted in a loop.
_MIN_UPTIME = 5.0


def _worker(cfg: ServerConfig, index: int) -> None:
    from pdp.server.app import serve

    # The index names the worker's audit chain; a replacement worker continues it.
    sys.exit(serve(cfg, reuse_port=True, worker=index))


def run_workers(cfg: ServerConfig) -> int:
    """Supervise `cfg.workers` processes until SIGTERM/SIGINT; the exit code."""
    from pdp.server.app import configure_logging

    configure_logging(cfg.log_level)
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start(index: int) -> tuple[BaseProcess, float]:
        p = ctx.Process(target=_worker, args=(cfg, index), name=f"pdp-worker-{index}")
        p.start()
        return p, time.monotonic()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [start(i) for i in range(cfg.workers)]
    log.info("supervising %d workers on %s", cfg.workers, cfg.listen)
    failed = False
    while not stopping.wait(0.2):
        for i, (p, since) in enumerate(workers):
            if p.is_alive():
                continue
            if time.monotonic() - since < _MIN_UPTIME:
                log.error(
                    "worker %s exited with %s right after starting; stopping", p.pid, p.exitcode
                )
                failed = True
                stopping.set()
                break
            log.warning("worker %s exited with %s; starting another", p.pid, p.exitcode)
            workers[i] = start(i)
    for p, _ in workers:
        if p.is_alive() and p.pid is not None:
            p.terminate()  # SIGTERM: each worker drains within its grace period
    deadline = time.monotonic() + cfg.grace_seconds + 5
    for p, _ in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("worker %s did not stop in time; killing it", p.pid)
            p.kill()
            p.join()
            failed = True
        elif p.exitcode != 0:
            failed = True
    return 1 if failed else 0
