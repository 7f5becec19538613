"""`pdp serve` as a process: config file and flags, SIGTERM drain, --workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pdp.client import Decision, PdpClient, PdpError
from tests.server.support import (
    ALICE,
    DOC,
    drain_output,
    free_port,
    health_status,
    start_process,
    wait_for,
)


def test_calls_whose_deadline_passes_on_the_pool_do_not_crash_the_server(
    policy_dir: Path, tmp_path: Path
) -> None:
    # Every lookup is a slow "miss" answered on the pool; the client gives up first.
    # The pool thread then used the call's (loop-owned) context after the call had
    # ended, and gRPC crashed the process with SIGSEGV (exit -11).
    records = tmp_path / "records.jsonl"
    proc = start_process(["-m", "tests.server.slow_server", str(policy_dir), str(records), "0.02"])
    target = f"127.0.0.1:{proc.port}"
    try:
        with PdpClient(target, timeout=0.005) as hasty:
            for _ in range(200):
                with pytest.raises(PdpError):
                    hasty.check(ALICE, "read", DOC)
        threading.Event().wait(0.3)  # the pool threads finish the abandoned calls
        assert proc.popen.poll() is None, drain_output(proc)
        with PdpClient(target, timeout=5) as patient:
            assert patient.check(ALICE, "read", DOC).allowed
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        proc.kill()


def test_sigterm_drains_in_flight_calls_and_flushes(policy_dir: Path, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    proc = start_process(["-m", "tests.server.slow_server", str(policy_dir), str(records), "1.0"])
    target = f"127.0.0.1:{proc.port}"
    try:
        wait_for(lambda: health_status(target) == "SERVING", what="SERVING")
        results: list[Decision | Exception] = []

        def one() -> None:
            with PdpClient(target, timeout=10) as c:
                try:
                    results.append(c.check(ALICE, "read", DOC))
                except PdpError as exc:
                    results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        threading.Event().wait(0.4)  # the calls are now inside the 1 s role lookup
        proc.terminate()
        threading.Event().wait(0.2)
        with PdpClient(target, timeout=2) as late, pytest.raises(PdpError) as refused:
            late.check(ALICE, "read", DOC)  # draining: no new calls
        assert refused.value.code == "UNAVAILABLE"
        for t in threads:
            t.join(15)
        assert proc.wait(20) == 0
        assert all(isinstance(r, Decision) and r.allowed for r in results), results
        flushed = [json.loads(line) for line in records.read_text().splitlines()]
        assert sorted(r["decision_id"] for r in flushed) == sorted(
            r.decision_id for r in results if isinstance(r, Decision)
        )
        out = drain_output(proc)
        assert "SIGTERM received; draining" in out
        assert "grace period" not in out  # every call finished within it
        assert "Traceback" not in out
    finally:
        proc.kill()


def test_calls_cut_off_by_the_grace_period_are_logged(policy_dir: Path, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    args = ["-m", "tests.server.slow_server", str(policy_dir), str(records), "5", "0.5"]
    proc = start_process(args)
    target = f"127.0.0.1:{proc.port}"
    try:
        wait_for(lambda: health_status(target) == "SERVING", what="SERVING")
        failed: list[str] = []

        def call() -> None:
            with PdpClient(target, timeout=10) as c:
                try:
                    c.check(ALICE, "read", DOC)
                except PdpError as exc:
                    failed.append(exc.code)

        caller = threading.Thread(target=call)
        caller.start()  # in flight for 5 s: longer than the 0.5 s grace
        threading.Event().wait(0.3)
        proc.terminate()
        assert proc.wait(4) == 0
        caller.join(10)
        assert failed and failed[0] in {"CANCELLED", "UNAVAILABLE"}, failed
        out = drain_output(proc)
        assert "calls were still running when the grace period (0.5 s) ended" in out
        # The lookup itself goes on for 5 s on its thread: the exit does not wait for it.
        assert "not waiting for 1 thread(s) still busy after the grace period (pdp-rpc_0)" in out
        assert "Traceback" not in out
    finally:
        proc.kill()


def test_serve_with_config_file_env_and_flags(
    policy_dir: Path, bindings_file: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "pdp.toml"
    cfg.write_text(
        f"""
listen = "127.0.0.1:1"
policies = "{policy_dir.name}"

[store]
bindings_file = "{bindings_file.name}"

[limits]
max_batch = 2
""",
        encoding="utf-8",
    )
    proc = start_process(
        ["-m", "pdp.cli.main", "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"]
    )
    try:
        with PdpClient(f"127.0.0.1:{proc.port}", timeout=5) as c:
            wait_for(lambda: c.server_info().policy_version, what="policies")
            assert c.check(ALICE, "read", DOC).allowed
            with pytest.raises(PdpError, match="more than 2"):
                c.check_actions(ALICE, ["read"] * 3, DOC)
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        proc.kill()


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "pdp.toml"
    cfg.write_text('[limits]\nmax_batch = "ten"\n', encoding="utf-8")
    r = serve_and_exit("--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f'error: {cfg}: limits.max_batch: must be a positive integer, got "ten"'
    )


def test_a_second_signal_during_the_drain_exits_at_once(policy_dir: Path, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    proc = start_process(["-m", "tests.server.slow_server", str(policy_dir), str(records), "5"])
    target = f"127.0.0.1:{proc.port}"
    try:
        wait_for(lambda: health_status(target) == "SERVING", what="SERVING")

        def call() -> None:
            with PdpClient(target, timeout=10) as c, pytest.raises(PdpError):
                c.check(ALICE, "read", DOC)  # cut off when the process exits

        caller = threading.Thread(target=call, daemon=True)
        caller.start()  # in flight for 5 s: the drain would wait for it
        threading.Event().wait(0.3)
        proc.terminate()
        threading.Event().wait(0.3)
        proc.terminate()
        assert proc.wait(3) == 1
        assert "received again while draining; exiting at once" in drain_output(proc)
        caller.join(10)
    finally:
        proc.kill()


def test_workers_share_one_port(policy_dir: Path, bindings_file: Path) -> None:
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
        ],
        listening=2,
        timeout=60,
    )
    try:
        pids: set[int] = set()

        def both_answer() -> bool:
            # A new connection each time: the kernel spreads connections, not calls.
            with PdpClient(f"127.0.0.1:{port}", timeout=5) as c:
                info = c.server_info()
                if info.policy_version:
                    assert c.check(ALICE, "read", DOC).allowed
                    pids.add(info.pid)
            return len(pids) == 2

        wait_for(both_answer, timeout=30, what="both workers to answer")
        assert proc.popen.pid not in pids  # the supervisor does not serve
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def test_workers_whose_supervisor_is_killed_drain_and_exit(
    policy_dir: Path, bindings_file: Path
) -> None:
    # SIGKILL (OOM, kill -9) forwards nothing: the workers notice their parent is gone.
    import os
    import signal

    port = free_port()
    args = ["serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"]
    args += ["--policies", str(policy_dir), "--bindings-file", str(bindings_file)]
    proc = start_process(
        ["-m", "pdp.cli.main", *args, "--set", "grace_seconds=1"], listening=2, timeout=60
    )
    try:
        pids: set[int] = set()

        def both_answer() -> bool:
            with PdpClient(f"127.0.0.1:{port}", timeout=5) as c:
                pids.add(c.server_info().pid)
            return len(pids) == 2

        wait_for(both_answer, timeout=30, what="both workers to answer")
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # A zombie until reaped by init: its state says it ended.
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        wait_for(lambda: all(gone(p) for p in pids), timeout=20, what="the workers to exit")
    finally:
        proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("flag", ["--store-url", "--db"])
def test_the_store_url_flag_has_the_name_other_commands_use(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pdp.cli.main import main

    assert main(["serve", flag, "sqlite:////tmp/other.db", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'url = "sqlite:////tmp/other.db"' in printed


def test_print_config_hides_database_passwords(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdp.cli.main import main

    monkeypatch.chdir(tmp_path)
    args = ["serve", "--db", "postgresql://pdp:s3cret@127.0.0.1/pdp", "--print-config"]
    assert main([*args, "--set", "audit.sink=sql", "--set", "audit.url=sqlite:///a.db"]) == 0
    printed = capsys.readouterr().out
    assert "s3cret" not in printed
    assert 'url = "postgresql://pdp:***@127.0.0.1/pdp"' in printed
    assert f'url = "sqlite:///{tmp_path}/a.db"' in printed  # relative to the directory


def _print_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str
) -> str:
    """`pdp serve ARGS --print-config` run in `cwd`, with no `PDP_*` variables; its output."""
    from pdp.cli.main import main

    for name in [n for n in os.environ if n.startswith("PDP_")]:
        monkeypatch.delenv(name)
    cwd.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    assert main(["serve", *args, "--print-config"]) == 0
    return capsys.readouterr().out


def test_print_config_output_is_a_config_file_that_prints_the_same_from_anywhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "pdp.toml").write_text(
        'policies = "pol"\n'
        '[store]\nurl = "sqlite:///pdp.db"\n'
        '[audit]\nsink = "sql"\nurl = "sqlite:///audit.db"\ninclude = ["subject"]\n'
        '[identity.jwt]\nproperties = {tenant = "org.tenant"}\n',
        encoding="utf-8",
    )
    first = _print_config(
        capsys, monkeypatch, tmp_path / "run", "--config", "../conf/pdp.toml", "--schema", "s.yaml"
    )
    assert f'policies = "{tmp_path}/run/../conf/pol"' in first  # the file's directory
    assert f'schema = "{tmp_path}/run/s.yaml"' in first  # a flag: the working directory
    assert f'url = "sqlite:///{tmp_path}/run/../conf/pdp.db"' in first
    assert f'url = "sqlite:///{tmp_path}/run/../conf/audit.db"' in first
    printed = tmp_path / "elsewhere" / "printed.toml"
    printed.parent.mkdir()
    printed.write_text(first, encoding="utf-8")
    again = _print_config(capsys, monkeypatch, tmp_path / "other", "--config", str(printed))
    assert again == first
    # And from the printed file's own directory, named relatively.
    here = _print_config(capsys, monkeypatch, printed.parent, "--config", "printed.toml")
    assert here == first


def test_print_config_shows_the_audit_directory_and_chains_that_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pdp.audit.recorder import default_chain

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "pdp.toml").write_text('[store]\nurl = "sqlite:///pdp.db"\n', encoding="utf-8")
    printed = _print_config(capsys, monkeypatch, tmp_path, "--config", "conf/pdp.toml")
    assert f'path = "{tmp_path}/conf/pdp-audit"' in printed  # next to the store, as it runs
    assert f'chain = ""  # empty: the host name, here "{default_chain()}"' in printed
    printed = _print_config(
        capsys, monkeypatch, tmp_path, "--bindings-file", "b/roles.yaml", "--workers", "2"
    )
    assert f'path = "{tmp_path}/b/pdp-audit"' in printed  # next to the bindings file
    assert (
        f'chain = ""  # empty: one chain per worker, here "{default_chain(0)}" to '
        f'"{default_chain(1)}"'
    ) in printed
    printed = _print_config(capsys, monkeypatch, tmp_path, "--set", "audit.chain=mine")
    assert 'chain = "mine"\n' in printed
    printed = _print_config(capsys, monkeypatch, tmp_path, "--set", "audit.sink=none")
    assert '[audit]\nsink = "none"\npath = ""\n' in printed  # no directory is written


def test_a_port_in_use_is_one_line_with_the_systems_reason(policy_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve_and_exit(
            "--listen",
            f"127.0.0.1:{port}",
            "--policies",
            str(policy_dir),
            "--set",
            "audit.sink=none",
        )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"pdp serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def serve_and_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """`pdp serve ARGS` run to its end (a start-up error), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pdp.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
