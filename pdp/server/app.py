"""The composition root: the one place that chooses and wires the server's parts.

Which role source (bindings file or SQL store), which audit sink and mode, TLS or
not, which credentials are accepted, and the gRPC server with its decision service,
the Envoy ext_authz service, health checking and reflection are all decided here
from a `ServerConfig`; nothing below this module reads configuration.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from pdp.audit.jsonl import JsonlSink
from pdp.audit.recorder import Recorder, default_chain, default_directory, open_recorder
from pdp.audit.sink import DecisionSink
from pdp.server.config import ServerConfig, split_address
from pdp.server.envoy_service import SERVICE_NAME as ENVOY_SERVICE_NAME
from pdp.server.envoy_service import EnvoyService, envoy_settings
from pdp.server.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from pdp.server.health import Health
from pdp.server.identity import IdentitySetupError, build_identity
from pdp.server.reload import Reloader
from pdp.server.roles import BindingsFileBackend, SqlStoreBackend
from pdp.server.service import SERVICE_NAME, DecisionService
from pdp.server.state import RoleBackend, ServingState, Snapshot
from pdp.store.blocking import forbid_blocking

log = logging.getLogger("pdp.server")


class StartupError(Exception):
    """The server cannot start (bad TLS files, address in use); one line for people."""


def role_backend(cfg: ServerConfig) -> RoleBackend:
    """Where roles come from: the bindings file when configured, else the SQL store."""
    if cfg.bindings_file:
        return BindingsFileBackend(cfg.bindings_file)
    return SqlStoreBackend(
        cfg.store_url,
        poll_interval=cfg.store_poll_interval,
        max_staleness=cfg.store_max_staleness,
    )


def decision_recorder(
    cfg: ServerConfig,
    *,
    worker: int | None = None,
    sink: DecisionSink | None = None,
    on_health: Callable[[bool, str], None] | None = None,
) -> Recorder | None:
    """The audit log's writer for `cfg.audit`; None for `audit.sink = "none"`.

    `sink` replaces the configured sink (tests, embedding); the mode and the other
    settings still apply. Each worker of `--workers` writes its own chain.
    """
    return open_recorder(
        cfg.audit,
        default_dir=default_directory(cfg.store_url, cfg.bindings_file),
        chain=default_chain(worker),
        on_health=on_health,
        sink=sink,
    )


def grpc_options(cfg: ServerConfig, *, reuse_port: bool) -> list[tuple[str, int]]:
    """Channel options shared by the PDP and the benchmark's echo server."""
    limit = cfg.limits.max_message_bytes
    return [
        # gRPC itself refuses only messages far over the limit (RESOURCE_EXHAUSTED); up to
        # twice the limit the service answers INVALID_ARGUMENT naming the limit.
        ("grpc.max_receive_message_length", 2 * limit + 1024),
        # gRPC turns SO_REUSEPORT on by default; with one process that would let a second
        # server start silently on a port in use, so it is on only for --workers.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def build_grpc_server(
    cfg: ServerConfig, *, reuse_port: bool = False, executor: ThreadPoolExecutor | None = None
) -> grpc.aio.Server:
    """A grpc.aio.Server with the configured limits, no services yet; made on the
    event loop that will run it.

    `executor` runs the handlers that are plain functions (health checking, the Envoy
    endpoint); the decision service's coroutines choose for themselves.
    """
    return grpc.aio.server(
        migration_thread_pool=executor,
        options=grpc_options(cfg, reuse_port=reuse_port),
        maximum_concurrent_rpcs=cfg.limits.max_concurrent_rpcs,
    )


def build_threaded_server(
    cfg: ServerConfig, *, reuse_port: bool = False, executor: ThreadPoolExecutor
) -> grpc.Server:
    """A thread-pool grpc.Server with the configured limits: for when any call may wait
    on I/O (credentials to look up), where a coroutine would only hand it to a thread."""
    return grpc.server(
        executor,
        options=grpc_options(cfg, reuse_port=reuse_port),
        maximum_concurrent_rpcs=cfg.limits.max_concurrent_rpcs,
    )


POOL_THREADS = "pdp-rpc"  # the name prefix of the call pool's threads


def thread_pool(cfg: ServerConfig) -> ThreadPoolExecutor:
    """The `threads` that answer calls which may block (store and identity lookups)."""
    return ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix=POOL_THREADS)


def bind(
    server: grpc.Server | grpc.aio.Server, cfg: ServerConfig, *, reuse_port: bool = False
) -> int:
    """Listen on `cfg.listen` (TLS when configured); the port actually bound."""
    _check_address(cfg.listen, reuse_port)
    tls = cfg.tls
    try:
        if tls.enabled:
            _check_tls_files(tls.cert, tls.key, tls.client_ca if tls.mutual else "")
            creds = grpc.ssl_server_credentials(
                [(_read(tls.key, "tls.key"), _read(tls.cert, "tls.cert"))],
                root_certificates=_read(tls.client_ca, "tls.client_ca") if tls.mutual else None,
                require_client_auth=tls.mutual,
            )
            port = server.add_secure_port(cfg.listen, creds)
        else:
            port = server.add_insecure_port(cfg.listen)
    except RuntimeError:
        # gRPC's own message points at GRPC_VERBOSITY; the cause is nearly always this.
        raise StartupError(
            f"cannot listen on {cfg.listen}: the address is in use or not available here"
        ) from None
    if port == 0:  # older grpc versions report failure this way
        raise StartupError(f"cannot listen on {cfg.listen}: address in use or not available")
    return port


def _check_address(listen: str, reuse_port: bool) -> None:
    """StartupError with the system's reason when `listen` cannot be bound now.

    gRPC would say only that no address was added, after printing a line of its own.
    """
    host, port = split_address(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if reuse_port:  # --workers: the others hold the port the same way
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


def _check_tls_files(cert: str, key: str, client_ca: str) -> None:
    """StartupError naming the setting whose file OpenSSL cannot use.

    gRPC would log its own lines and then fail to listen, as if the port were taken.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for setting, path in (("tls.cert", cert), ("tls.client_ca", client_ca)):
        if path:
            _read(path, setting)  # a missing file is named as such
            try:
                ctx.load_verify_locations(cafile=path)
            except ssl.SSLError:
                raise StartupError(f"{setting}: {path} holds no PEM certificate") from None
    _read(key, "tls.key")
    try:
        # A password callback, so that an encrypted key fails instead of prompting.
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise StartupError(
            f"tls.key: {key} is not an unencrypted PEM private key for the certificate in "
            f"tls.cert ({exc.reason or exc})"
        ) from None


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


@dataclass
class PdpServer:
    """One serving process: start(), then wait() or stop()."""

    cfg: ServerConfig
    backend: RoleBackend | None = None
    sink: DecisionSink | None = None  # replaces the configured audit sink
    reuse_port: bool = False
    worker: int | None = None  # which worker of `--workers` this is

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = role_backend(self.cfg)
        try:
            self.identity = build_identity(self.cfg)
        except IdentitySetupError as exc:
            self.backend.close()
            raise StartupError(str(exc)) from None
        self.state = ServingState(
            self.cfg.policies, self.cfg.schema, self.backend, routes=self.cfg.routes_path
        )
        self.health = Health()
        self._stopped = False
        # Set before the recorder opens: a sink failing to open reports to health.
        self.envoy: EnvoyService | None = None
        self._started = False
        # Durable audit: no answers without records, so a failing sink is NOT_SERVING.
        self._audit_ok = True
        self.recorder = decision_recorder(
            self.cfg, worker=self.worker, sink=self.sink, on_health=self._on_audit_health
        )
        self.started_at = datetime.now(UTC)
        self._pool = thread_pool(self.cfg)
        # Decision calls on an event loop (grpc.aio) unless any call may have to wait for a
        # credential lookup (keys, sessions, JWKS): then a thread-pool server, which hands
        # a call to a thread more cheaply than a loop does (measured: docs/server.md). A
        # role lookup that needs the database moves its call to the pool by itself
        # (pdp.store.blocking).
        self.on_loop = not self.cfg.identity.enabled
        self.service = DecisionService(
            self.state,
            self.cfg.limits,
            recorder=self.recorder,
            allowed_callers=frozenset(self.cfg.tls.allowed_callers),
            tls=self.cfg.tls.enabled,
            started_at=self.started_at,
            authenticator=self.identity.authenticator if self.cfg.identity.enabled else None,
            inline=self.on_loop,
            executor=self._pool,
        )
        if self.cfg.envoy.enabled:
            if not self.cfg.identity.enabled:
                log.warning(
                    "envoy: no credential is accepted (no identity.jwt, identity.apikeys or "
                    "identity.sessions): only `authentication: optional` routes can allow"
                )
            self.envoy = EnvoyService(
                self.state,
                self.identity,
                envoy_settings(self.cfg.envoy, self.identity),
                recorder=self.recorder,
                allowed_callers=frozenset(self.cfg.tls.allowed_callers),
                tls=self.cfg.tls.enabled,
            )
        self.reloader = Reloader(
            self.state,
            debounce_ms=self.cfg.reload_debounce_ms,
            watch=self.cfg.reload_enabled,
            ignore=[self._audit_dir()] if self.cfg.audit.sink == "jsonl" else [],
        )
        # grpc.aio runs on an event loop of its own thread; start() and stop() stay plain.
        self.server: grpc.Server | grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.port = 0
        self.state.on_ready_change(self._on_ready)
        self.state.on_swap(self._on_swap)

    def _audit_dir(self) -> Path:
        return (
            Path(self.cfg.audit.path)
            if self.cfg.audit.path
            else default_directory(self.cfg.store_url, self.cfg.bindings_file)
        )

    def start(self, *, wait_ready: bool = True) -> int:
        """Bind, start answering (NOT_SERVING until loaded), load, watch; the port."""
        rec = self.recorder
        if rec is not None and not rec.healthy and isinstance(rec.writer.sink, JsonlSink):
            # A local directory that cannot be opened (permissions, another process
            # writing it) is a setting to fix, not an outage to wait out.
            error = rec.stats().last_error
            rec.close(1.0)
            raise StartupError(f"audit log: {error}")
        self._started = True
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if self.on_loop:
                self.port = self._start_on_loop()
            else:
                server = build_threaded_server(
                    self.cfg, reuse_port=self.reuse_port, executor=self._pool
                )
                self.port = self._add_services(server)
                server.start()
                self.server = server
        except BaseException:
            # Cannot listen (port, TLS files): release the audit log's lock, the store
            # and the threads, so that an embedding program may try again.
            self.stop(0)
            raise
        if wait_ready:
            self.state.load_all()
        else:
            threading.Thread(target=self.state.load_all, name="pdp-load", daemon=True).start()
        self.reloader.start()
        return self.port

    def _add_services(self, server: grpc.Server | grpc.aio.Server) -> int:
        """Every service on `server`, then bind it; the port."""
        server.add_generic_rpc_handlers((self.service.handler(),))
        services = [SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME]
        if self.envoy is not None:
            self.envoy.add_to(server)
            services.append(ENVOY_SERVICE_NAME)
        self.health.attach(server, self._loop)
        reflection.enable_server_reflection(services, server)
        return bind(server, self.cfg, reuse_port=self.reuse_port)

    def _start_on_loop(self) -> int:
        loop = self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=loop.run_forever, name="pdp-grpc", daemon=True)
        self._loop_thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self._start_aio(), loop).result()
        except BaseException:
            self._stop_loop()
            raise

    async def _start_aio(self) -> int:
        forbid_blocking()  # this is the loop's thread: lookups here never wait on I/O
        server = build_grpc_server(self.cfg, reuse_port=self.reuse_port, executor=self._pool)
        port = self._add_services(server)
        await server.start()
        self.server = server
        return port

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._loop_thread = None

    def _on_ready(self, ready: bool) -> None:
        if ready and not self._stopped:
            # What start-up loaded (modules, the first policy set) lives as long as the
            # process: move it out of the cyclic collector's way, so that collections
            # on the hot path scan only new objects (measured: ~15% less CPU per call).
            gc.freeze()
            # Requests make many short-lived, acyclic objects; collecting the youngest
            # generation every 700 allocations costs CPU on every call for nothing.
            # Reference counting frees them; the collector still runs, less often.
            gc.set_threshold(50_000, 20, 20)
            self._update_health()

    def _on_swap(self, snap: Snapshot) -> None:
        # A route table may arrive (or be fixed) after the policies: follow it.
        if self.envoy is not None and not self._stopped:
            self._update_health()

    def _on_audit_health(self, healthy: bool, reason: str) -> None:
        """The audit sink failed or recovered (called on the audit writer's thread)."""
        if self.cfg.audit.mode != "durable":
            return  # buffered: answers go on; the loss is counted in ServerInfo
        self._audit_ok = healthy
        if not healthy and self._started:  # before start(), start() says it (and stops)
            log.error(
                "audit log failing (%s): decisions are denied until it recovers; "
                "health is NOT_SERVING",
                reason,
            )
        self._update_health()

    def _update_health(self) -> None:
        if self._stopped:
            return  # draining: the shutdown state stays
        serving = self.state.ready and self._audit_ok
        self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if self.envoy is not None:
            # The Envoy endpoint also needs a route table; pdp.v1 does not.
            self.health.set(
                ENVOY_SERVICE_NAME,
                health_pb2.HealthCheckResponse.SERVING
                if serving and self.envoy.ready()
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    def _set_health(self, status: int) -> None:
        names = ("", SERVICE_NAME, ENVOY_SERVICE_NAME) if self.envoy else ("", SERVICE_NAME)
        for name in names:
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let those in flight finish within `grace`, flush, close."""
        if self._stopped:
            return
        self._stopped = True
        # Health first, so that load balancers stop sending before the port closes.
        self.health.enter_graceful_shutdown()
        self.reloader.stop()
        grace = self.cfg.grace_seconds if grace is None else grace
        started = time.monotonic()
        if isinstance(self.server, grpc.aio.Server) and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result()
        elif isinstance(self.server, grpc.Server):
            self.server.stop(grace).wait()
        if grace > 0 and time.monotonic() - started >= grace:
            # gRPC says no more than that it waited the whole grace period: what was
            # still running then was cancelled (its callers got CANCELLED).
            log.warning(
                "calls were still running when the grace period (%.1f s) ended; they were "
                "cancelled (grace_seconds sets it)",
                grace,
            )
        if self.recorder is not None:
            # After the last call: what is buffered is written before the process ends
            # (with the loop still running, for durable calls awaiting their records).
            self.recorder.close()
        self._stop_loop()
        self._pool.shutdown(wait=False)
        assert self.backend is not None
        self.backend.close()
        self.identity.close()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    # Migrations' chatter at start-up is not news for someone running a server.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # "N changes detected": we log what a change leads to (reloading what) ourselves.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, logging.getLogger().level))


def serve(
    cfg: ServerConfig,
    *,
    reuse_port: bool = False,
    backend: RoleBackend | None = None,
    sink: DecisionSink | None = None,
    worker: int | None = None,
) -> int:
    """Run one serving process until SIGTERM or SIGINT; the exit code.

    It owns the process: signal handlers, logging, and an `os._exit` when threads are
    still stuck after the drain. To serve inside a program of your own, use `PdpServer`.
    `backend` and `sink` replace the configured ones (for tests and custom stores);
    `worker` is this process's number under `--workers`.
    """
    configure_logging(cfg.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # A second signal during the drain: the operator wants out now.
            log.error("%s received again while draining; exiting at once", name)
            os._exit(1)
        log.info("%s received; draining (grace %.1f s)", name, cfg.grace_seconds)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = PdpServer(cfg, backend=backend, sink=sink, reuse_port=reuse_port, worker=worker)
        port = server.start(wait_ready=False)
    except StartupError as exc:
        print(f"pdp serve: error: {exc}", file=sys.stderr)
        return 1
    host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
    mode = "mutual TLS" if cfg.tls.mutual else "TLS" if cfg.tls.enabled else "plaintext"
    # One stable line that scripts (and the tests) wait for.
    # One write, newline included: `--workers` processes share stdout, and print()'s
    # separate write of the newline let two workers' lines run together.
    sys.stdout.write(f"pdp serve: listening on {host}:{port} ({mode}), pid {os.getpid()}\n")
    sys.stdout.flush()
    # A worker whose supervisor is gone (killed: no SIGTERM was forwarded) drains
    # and exits, rather than serve on with the old settings beside a new supervisor.
    supervisor = os.getppid() if worker is not None else None
    while not stop.wait(0.5):
        if supervisor is not None and os.getppid() != supervisor:
            log.warning("the supervisor (pid %d) is gone; draining", supervisor)
            break
    server.stop()
    stuck = _threads_still_busy(wait=1.0)
    if stuck:
        # A lookup stuck past the grace period (a database that stopped answering)
        # would hold the exit until it returns: the interpreter joins such threads.
        # Their calls were cancelled and nothing of theirs is left to flush.
        log.warning(
            "stopped; not waiting for %d thread(s) still busy after the grace period (%s)",
            len(stuck),
            ", ".join(sorted(t.name for t in stuck)),
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    log.info("stopped")
    return 0


def _threads_still_busy(wait: float) -> list[threading.Thread]:
    """The threads the interpreter would wait for at exit, still running after `wait` s:
    non-daemon ones, and the call pool's (joined at exit whatever their daemon flag)."""
    deadline = time.monotonic() + wait
    me = threading.current_thread()
    others = [
        t
        for t in threading.enumerate()
        if t is not me and (not t.daemon or t.name.startswith(POOL_THREADS))
    ]
    for t in others:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in others if t.is_alive()]
