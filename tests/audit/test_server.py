"""The audit log through the real gRPC server: every decision recorded, both modes,
redaction, a failing sink, and a server killed with SIGKILL under load."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pdp.audit.query import Filter
from pdp.audit.read import JsonlSource
from pdp.audit.record import DecisionRecord
from pdp.audit.sink import MemorySink
from pdp.audit.verify import verify
from pdp.cli.main import main
from pdp.client import Decision, PdpClient, PdpError
from pdp.server.app import PdpServer, StartupError
from pdp.server.config import ConfigError, load_config
from tests.audit.support import wait_for
from tests.server.support import (
    ALICE,
    BINDINGS,
    BOB,
    DOC,
    LOCKED,
    MALLORY,
    NOTE,
    POLICIES,
    health_status,
    start_process,
)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    for name, text in POLICIES.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


@pytest.fixture
def bindings_file(tmp_path: Path) -> Path:
    p = tmp_path / "bindings.yaml"
    p.write_text(BINDINGS, encoding="utf-8")
    return p


class Served:
    def __init__(self, server: PdpServer, log: Path) -> None:
        self.server = server
        self.log = log
        self.client = PdpClient(f"127.0.0.1:{server.port}", timeout=10)
        self.target = f"127.0.0.1:{server.port}"

    def records(self) -> dict[str, DecisionRecord]:
        page = JsonlSource(self.log).search(Filter(), 10_000)
        assert not page.problems
        return {r.decision_id: r for r in page.records}


@pytest.fixture
def serve(policy_dir: Path, bindings_file: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(sink: MemorySink | None = None, **settings: object) -> Served:
        log = tmp_path / "audit"
        flags = {
            "listen": "127.0.0.1:0",
            "policies": str(policy_dir),
            "store.bindings_file": str(bindings_file),
            "audit.path": str(log),
            **settings,
        }
        server = PdpServer(load_config(None, environ={}, flags=flags), sink=sink)
        server.start()
        s = Served(server, log)
        started.append(s)
        return s

    yield start
    for s in started:
        s.client.close()
        s.server.stop(0.5)


def test_every_decision_is_recorded_with_its_fields(serve: Any) -> None:
    s = serve()  # the defaults: JSONL, durable, next to the bindings file's directory
    c = s.client
    answered: list[Decision] = []
    answered += c.check_actions(ALICE, ["read", "write"], DOC)
    answered.append(c.check(MALLORY, "read", DOC))  # cross-tenant: the tenant forbid
    answered += c.evaluations(
        [
            {"action": "read"},
            {"action": "write", "resource": LOCKED},
            {"action": "read", "resource": NOTE},
            {"action": "fly"},
            {"action": "read", "subject": {"type": "user"}},  # no id: invalid
            {"action": "read", "resource": {**DOC, "ancestors": ["folder/"]}},  # invalid
        ],
        subject=BOB,
        resource=DOC,
    )
    answered += c.list_actions(ALICE, DOC).decisions
    records = s.records()  # durable: on disk before the answers came back
    assert sorted(records) == sorted(d.decision_id for d in answered)
    for d in answered:
        r = records[d.decision_id]
        assert r.allowed == d.allowed and r.action == d.action
        assert [x.rule for x in r.reasons] == list(d.reasons)
        assert [(x.code, x.rule_id or "") for x in r.diagnostics] == [
            (x.code, x.rule_id) for x in d.diagnostics
        ]
        assert r.policy_version == d.policy_version and r.policy_version.startswith("sha256:")
        assert r.bindings_version == d.bindings_version
        assert r.caller == "ipv4:127.0.0.1" and r.latency_us > 0
        assert r.chain and r.hash
    first = records[answered[0].decision_id]
    assert (first.subject, first.resource, first.roles) == ("user:alice", "doc/1", ("viewer",))
    assert [(x.rule, x.at) for x in first.reasons] == [("doc.viewer-read", "docs.pdp:7")]
    denied = records[answered[2].decision_id]
    assert not denied.allowed and [(x.rule, x.at) for x in denied.reasons] == [
        ("doc.tenant", "docs.pdp:22")
    ]
    locked = records[answered[4].decision_id]
    assert [x.rule for x in locked.reasons] == ["doc.locked"]
    invalid = records[answered[7].decision_id]
    assert invalid.diagnostics[0].code == "invalid_request" and invalid.subject_type == ""
    assert invalid.resource == "doc/1"  # what was valid still names the record
    bad_ancestor = records[answered[8].decision_id]
    assert bad_ancestor.diagnostics[0].code == "invalid_request"
    assert bad_ancestor.subject == "user:bob"  # found by `pdp audit search subject=user:bob`
    assert bad_ancestor.resource == "doc/1"  # and by resource=doc/1
    # No attributes unless configured.
    assert first.subject_properties is None and first.context is None
    assert verify(JsonlSource(s.log)).ok
    info = c.server_info().audit
    assert (info.sink, info.mode, info.healthy) == ("jsonl", "durable", True)
    assert info.written == len(answered) and info.lost == info.rejected == 0


def test_attributes_are_recorded_where_configured_and_redacted(serve: Any, tmp_path: Path) -> None:
    s = serve(
        **{
            "audit.include": ["subject", "resource", "context"],
            "audit.redact": ["subject.properties.email", "context.token"],
        }
    )
    alice = {**ALICE, "properties": {"email": "alice@example.com", "team": "red"}}
    d = s.client.check(alice, "read", DOC, {"token": "secret", "ip": "10.0.0.1"})
    r = s.records()[d.decision_id]
    # The subject as the engine saw it: the stored attributes (tenant) are there too.
    assert r.subject_properties == {"email": "[redacted]", "team": "red", "tenant": "acme"}
    assert r.context == {"token": "[redacted]", "ip": "10.0.0.1"}
    assert r.resource_properties == {"tenant": "acme"} and r.resource_ancestors == ()
    assert r.action_properties is None
    assert "alice@example.com" not in (s.log / f"{r.chain}.jsonl").read_text()


def test_show_re_derives_a_served_decision(
    serve: Any, policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = serve(**{"audit.include": ["subject", "action", "resource", "context"]})
    d = s.client.check(MALLORY, "read", DOC)
    code = main(
        ["audit", "show", d.decision_id, "--log", str(s.log), "--policies", str(policy_dir)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "re-derived: deny (matches the record)" in out and "doc.tenant" in out


def test_an_internal_error_is_a_recorded_deny(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = serve()

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("pdp.server.service.evaluate", broken)
    ds = s.client.check_actions(ALICE, ["read", "write"], DOC)
    assert [d.allowed for d in ds] == [False, False]
    records = s.records()
    for d in ds:  # every decision id the caller holds is on record, with the cause
        rec = records[d.decision_id]
        assert not rec.allowed and rec.resource == f"{DOC['type']}/{DOC['id']}"
        assert [x.code for x in rec.diagnostics] == ["internal_error"]


def test_buffered_answers_without_waiting_and_writes_soon(serve: Any) -> None:
    s = serve(**{"audit.mode": "buffered", "audit.flush_interval": 0.05})
    ids = [s.client.check(ALICE, "read", DOC).decision_id for _ in range(20)]
    wait_for(lambda: set(ids) <= set(s.records()), timeout=5, what="the buffered records")
    # The counter moves just after the batch reaches the file: wait for it too.
    wait_for(lambda: s.client.server_info().audit.written == 20, timeout=5, what="the count")
    info = s.client.server_info().audit
    assert info.mode == "buffered" and info.pending == 0 and info.lost == 0


def test_durable_denies_when_the_sink_fails_and_says_so(serve: Any) -> None:
    sink = MemorySink()
    s = serve(sink=sink, **{"audit.durable_timeout": 2.0})
    assert s.client.check(ALICE, "read", DOC).allowed
    sink.fail_with = OSError("disk gone")
    d = s.client.check(ALICE, "read", DOC)
    assert not d.allowed
    assert [x.code for x in d.diagnostics] == ["audit_unavailable"]
    assert d.decision_id == ""  # no record holds it, so no id is handed out
    wait_for(lambda: health_status(s.target) == "NOT_SERVING", what="NOT_SERVING")
    info = s.client.server_info().audit
    assert not info.healthy and info.rejected >= 1 and "disk gone" in info.last_error
    sink.fail_with = None
    wait_for(lambda: health_status(s.target) == "SERVING", timeout=10, what="SERVING again")
    assert s.client.check(ALICE, "read", DOC).allowed
    # Only answered allows are in the log; the denied call left no record.
    assert [r.allowed for r in sink.records] == [True, True]


class _HungSink(MemorySink):
    """Its first write waits for `gate`: the writes behind it queue up."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write_batch(self, records: Any, lines: Any) -> None:
        self.writing.set()
        self.gate.wait(10)
        super().write_batch(records, lines)


def test_durable_call_queued_behind_a_hung_write_is_denied_at_its_time_out(
    serve: Any,
) -> None:
    sink = _HungSink()
    s = serve(sink=sink, **{"audit.durable_timeout": 0.5})
    first: list[Decision] = []
    caller = threading.Thread(target=lambda: first.append(s.client.check(ALICE, "read", DOC)))
    caller.start()
    assert sink.writing.wait(5)  # the first call's record is being written, and hangs
    started = time.monotonic()
    d = s.client.check(BOB, "read", DOC)
    waited = time.monotonic() - started
    assert not d.allowed and d.decision_id == ""
    assert [x.code for x in d.diagnostics] == ["audit_unavailable"]
    assert 0.5 <= waited < 5
    sink.gate.set()
    caller.join(5)
    # The call whose record was being written waited for the write, past its time-out.
    assert first and first[0].allowed and first[0].decision_id
    assert [r.decision_id for r in sink.records] == [first[0].decision_id]
    assert s.client.server_info().audit.rejected == 1


def test_durable_denies_every_decision_of_a_batch_and_of_list_actions_unrecorded(
    serve: Any,
) -> None:
    sink = MemorySink()
    s = serve(sink=sink, **{"audit.durable_timeout": 2.0})
    assert s.client.list_actions(ALICE, DOC).allowed  # something is allowed while it works
    sink.fail_with = OSError("disk gone")
    batch = s.client.evaluations(
        [{"action": "read"}, {"action": "write"}], subject=ALICE, resource=DOC
    )
    listed = s.client.list_actions(ALICE, DOC)
    for d in [*batch, *listed.decisions]:
        assert not d.allowed and d.reasons == () and d.decision_id == ""
        assert [x.code for x in d.diagnostics] == ["audit_unavailable"]
    assert len(batch) == 2 and listed.decisions
    assert listed.allowed == ()  # nothing is allowed that the log does not hold


def test_buffered_keeps_answering_when_the_sink_fails_and_counts_losses(serve: Any) -> None:
    sink = MemorySink()
    sink.fail_with = OSError("read-only")
    s = serve(sink=sink, **{"audit.mode": "buffered", "audit.buffer_limit": 5})
    answers = [s.client.check(ALICE, "read", DOC) for _ in range(12)]
    assert all(d.allowed for d in answers)
    assert health_status(s.target) == "SERVING"
    info = s.client.server_info().audit
    assert info.lost >= 6 and info.pending <= 6 and not info.healthy


def test_sampling_keeps_denials(serve: Any) -> None:
    s = serve(**{"audit.sample_allowed": 0.0})
    allowed = [s.client.check(ALICE, "read", DOC) for _ in range(5)]
    denied = [s.client.check(MALLORY, "read", DOC) for _ in range(3)]
    assert all(d.allowed for d in allowed) and not any(d.allowed for d in denied)
    assert sorted(s.records()) == sorted(d.decision_id for d in denied)
    assert s.client.server_info().audit.sampled_out == 5


def test_the_sql_sink_through_the_server(serve: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    s = serve(**{"audit.sink": "sql", "audit.url": url})
    d = s.client.check(BOB, "write", DOC)
    from pdp.audit.sql import SqlSource

    src = SqlSource(url)
    try:
        r, _ = src.get(d.decision_id)
        assert r is not None and r.allowed and [x.rule for x in r.reasons] == ["doc.editor-write"]
    finally:
        src.close()


def test_a_log_another_process_writes_is_a_startup_error(
    policy_dir: Path, bindings_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pdp.audit.jsonl import JsonlSink
    from pdp.audit.recorder import default_chain

    holder = JsonlSink(tmp_path / "audit")
    holder.head(default_chain())
    flags = {
        "listen": "127.0.0.1:0",
        "policies": str(policy_dir),
        "store.bindings_file": str(bindings_file),
        "audit.path": str(tmp_path / "audit"),
    }
    server = PdpServer(load_config(None, environ={}, flags=flags))
    with pytest.raises(StartupError, match="audit log: .* is being written by another process"):
        server.start()
    holder.close()
    # One error, the one start() raises: no traceback from the health listener, and
    # no "decisions are denied" for a server that never answered.
    assert not [r for r in caplog.records if r.exc_info or "denied" in r.getMessage()]


def test_audit_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match='audit.url: the "sql" sink needs a database URL'):
        load_config(None, environ={}, flags={"audit.sink": "sql"})
    with pytest.raises(ConfigError, match="audit.redact: `email` is not a field path"):
        load_config(None, environ={}, flags={"audit.redact": ["email"]})
    with pytest.raises(ConfigError, match="audit.include: must name sections among"):
        load_config(None, environ={}, flags={"audit.include": ["everything"]})
    with pytest.raises(ConfigError, match="audit.sample_allowed: must be a number from 0 to 1"):
        load_config(None, environ={}, flags={"audit.sample_allowed": 2})
    env = {"PDP_AUDIT_MODE": "buffered", "PDP_AUDIT_INCLUDE": "subject, context"}
    cfg = load_config(None, environ=env)
    assert cfg.audit.mode == "buffered" and cfg.audit.include == ("subject", "context")


# --- a server killed under load -----------------------------------------------------------


def test_sigkill_under_load_loses_no_answered_decision(
    policy_dir: Path, bindings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit"
    args = [
        "-m",
        "pdp.cli.main",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        str(policy_dir),
        "--bindings-file",
        str(bindings_file),
        "--set",
        f"audit.path={log}",
        "--set",
        "audit.max_bytes=20000",  # rotations happen during the load too
        "--log-level",
        "warning",
    ]
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(target: str, who: dict[str, str]) -> None:
        with PdpClient(target, timeout=5) as c:
            while not stop.is_set():
                try:
                    ds = c.check_actions(who, ["read", "write"], DOC)
                except PdpError:
                    return  # the server is gone
                with lock:
                    answered.extend(d.decision_id for d in ds)

    proc = start_process(args)
    try:
        target = f"127.0.0.1:{proc.port}"
        wait_for(lambda: health_status(target) == "SERVING", what="SERVING")
        threads = [
            threading.Thread(target=client, args=(target, who))
            for who in (ALICE, BOB, MALLORY, ALICE, BOB, MALLORY)
        ]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) > 600, timeout=30, what="load")
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
        proc.kill()
    assert len(answered) > 600
    stored = {r.decision_id for r in JsonlSource(log).search(Filter(), 1_000_000).records}
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} answered decisions are not in the log"
    assert len(list(log.glob("*.0*.jsonl"))) >= 2  # it did rotate
    code = main(["audit", "verify", "--log", str(log)])
    out = capsys.readouterr().out
    assert code == 0, out
    # A restarted server continues the same chain after the crash.
    proc = start_process(args)
    try:
        with PdpClient(f"127.0.0.1:{proc.port}", timeout=5) as c:
            wait_for(lambda: health_status(f"127.0.0.1:{proc.port}") == "SERVING", what="up")
            last = c.check(ALICE, "read", DOC).decision_id
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    report = verify(JsonlSource(log))
    assert report.ok and len(report.chains) == 1
    assert report.chains[0].last_seq == len(stored) + 1
    assert JsonlSource(log).get(last)[0] is not None


def test_workers_write_one_chain_each(
    policy_dir: Path, bindings_file: Path, tmp_path: Path
) -> None:
    from tests.server.support import free_port

    log = tmp_path / "audit"
    port = free_port()
    proc = start_process(
        [
            "-m",
            "pdp.cli.main",
            "serve",
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--policies",
            str(policy_dir),
            "--bindings-file",
            str(bindings_file),
            "--set",
            f"audit.path={log}",
        ],
        listening=2,
        timeout=60,
    )
    try:
        chains: set[str] = set()

        def both() -> bool:
            with PdpClient(f"127.0.0.1:{port}", timeout=5) as c:
                info = c.server_info()
                if info.policy_version:
                    c.check(ALICE, "read", DOC)
                    chains.add(info.audit.chain)
            return len(chains) == 2

        wait_for(both, timeout=30, what="both workers")
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert {c.rsplit("-", 1)[1] for c in chains} == {"w0", "w1"}
    report = verify(JsonlSource(log))
    assert report.ok and sorted(c.chain for c in report.chains) == sorted(chains)


def test_records_json_shape_on_disk(serve: Any) -> None:
    s = serve()
    d = s.client.check(ALICE, "read", DOC)
    line = next(iter(s.log.glob("*.jsonl"))).read_text().splitlines()[0]
    obj = json.loads(line)
    assert obj["decision_id"] == d.decision_id
    assert list(obj) == sorted(k for k in obj if k != "hash") + ["hash"]  # canonical form
    assert obj["v"] == 2 and obj["decision"] == "allow" and obj["seq"] == 1
    assert obj["time"].endswith("Z") and obj["prev"] == "0" * 64


def test_audit_writes_next_to_the_bindings_file_do_not_wake_the_reloader(
    serve: Any, caplog: pytest.LogCaptureFixture, bindings_file: Path
) -> None:
    s = serve(**{"reload.debounce_ms": 20})
    assert s.log.parent == bindings_file.parent  # watched for the bindings file
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            s.client.check(ALICE, "read", DOC)
            time.sleep(0.03)
        time.sleep(0.2)
        assert "change detected" not in caplog.text
        # A real change to the bindings file is still seen.
        bindings_file.write_text(BINDINGS + "  - {subject: user:bob, role: viewer}\n")
        wait_for(lambda: "bindings file changed" in caplog.text, what="the reload")
