"""Hot reload through the real server: good change, bad change, deleted file, bindings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pdp.client import PdpClient
from pdp.server.app import PdpServer
from pdp.v1 import decision_pb2 as pb
from tests.server.support import ALICE, DOC, NOTE, Running, server_config, wait_for


def version(client: PdpClient) -> str:
    return client.server_info().policy_version


def failed_reload(client: PdpClient) -> pb.ServerInfoResponse | None:
    info = client.server_info()
    return None if info.last_reload.ok else info


def test_good_change_is_swapped_in(running: Running) -> None:
    client = running.client
    before = version(client)
    assert not client.check(ALICE, "write", DOC).allowed
    docs = running.policy_dir / "docs.pdp"
    docs.write_text(
        docs.read_text().replace("permit editor to write", "permit viewer to write"),
        encoding="utf-8",
    )
    after = wait_for(lambda: (v := version(client)) != before and v, what="a new version")
    d = client.check(ALICE, "write", DOC)
    assert d.allowed and d.reasons == ("doc.editor-write",)
    assert d.policy_version == after
    info = client.server_info()
    assert info.last_reload.ok and info.last_reload.policy_version == after


def test_bad_change_keeps_the_last_good_set(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pdp.server")
    client = running.client
    good = version(client)
    docs = running.policy_dir / "docs.pdp"
    text = docs.read_text()
    docs.write_text(text.replace("permit viewer to read", "permit viewr to read"), "utf-8")
    info = wait_for(lambda: failed_reload(client), what="the failed reload")
    assert info.policy_version == good  # still serving the last good set
    assert info.last_reload.policy_version not in ("", good)
    errors = "\n".join(info.last_reload.errors)
    assert "docs.pdp:7:10: error[unknown_role]" in errors
    assert "permit viewr to read" in errors  # the line, with a caret under it
    d = client.check(ALICE, "read", DOC)
    assert d.allowed and d.policy_version == good
    # Fixing the file recovers; the version is the original one again.
    docs.write_text(text, "utf-8")
    wait_for(lambda: client.server_info().last_reload.ok, what="the recovery")
    assert version(client) == good
    # The log says it is over, not only that it failed.
    assert f"policy files are valid again; serving {good}" in caplog.text


def test_deleted_file_removes_its_rules(running: Running) -> None:
    client = running.client
    before = version(client)
    assert client.check(ALICE, "read", NOTE).allowed
    (running.policy_dir / "notes.pdp").unlink()
    wait_for(lambda: version(client) != before, what="a new version")
    d = client.check(ALICE, "read", NOTE)
    assert not d.allowed and d.diagnostics[0].code == "unknown_resource_type"
    assert client.server_info().policy_files == 2


def test_deleting_every_file_keeps_serving(running: Running) -> None:
    client = running.client
    before = version(client)
    for f in running.policy_dir.glob("*.pdp"):
        f.unlink()
    info = wait_for(lambda: failed_reload(client), what="the failed reload")
    assert "no policy files found" in info.last_reload.errors[0]
    assert client.check(ALICE, "read", DOC).policy_version == before


def test_bindings_file_change(running: Running) -> None:
    client = running.client
    before = client.server_info().bindings_version
    assert not client.check(ALICE, "write", DOC).allowed
    text = running.bindings_file.read_text()
    running.bindings_file.write_text(
        text.replace("{subject: user:alice, role: viewer", "{subject: user:alice, role: editor"),
        encoding="utf-8",
    )
    wait_for(lambda: client.server_info().bindings_version != before, what="new bindings")
    d = client.check(ALICE, "write", DOC)
    assert d.allowed and d.bindings_version != before
    # A broken bindings file keeps the last good bindings.
    good = client.server_info().bindings_version
    running.bindings_file.write_text("bindings: [{subject: nobody}]", encoding="utf-8")
    info = wait_for(lambda: failed_reload(client), what="the failed bindings reload")
    assert info.last_reload.what == "bindings" and info.bindings_version == good
    assert client.check(ALICE, "write", DOC).allowed


def test_a_failing_part_stays_in_last_reload_until_it_loads(running: Running) -> None:
    # Broken policy files, then a good bindings change: last_reload must still say the
    # policies fail (the last good set is served); `reloads` holds each part's latest.
    client = running.client
    docs = running.policy_dir / "docs.pdp"
    text = docs.read_text()
    docs.write_text(text.replace("permit viewer to read", "permit viewr to read"), "utf-8")
    # Generous: under a loaded CI box the watcher has been seen to take its time.
    wait_for(lambda: failed_reload(client), timeout=30, what="the failed policy reload")
    before = client.server_info().bindings_version
    bindings = running.bindings_file.read_text()
    running.bindings_file.write_text(
        bindings.replace("role: viewer", "role: editor", 1), encoding="utf-8"
    )
    info = wait_for(
        lambda: (i := client.server_info()).bindings_version != before and i,
        what="the new bindings",
    )
    assert not info.last_reload.ok and info.last_reload.what == "policies"
    parts = {r.what: r for r in info.reloads}
    assert not parts["policies"].ok and parts["bindings"].ok
    assert parts["bindings"].bindings_version == info.bindings_version
    docs.write_text(text, "utf-8")
    info = wait_for(lambda: (i := client.server_info()).last_reload.ok and i, what="recovery")
    assert info.last_reload.what == "policies" and all(r.ok for r in info.reloads)


def test_a_configmap_style_swap_is_one_reload(
    tmp_path: Path, policy_dir: Path, bindings_file: Path
) -> None:
    # The layout kubelet keeps up to date: files in a timestamped hidden directory,
    # `..data` linking to it, a link per file at the top. An update writes a new
    # directory and swaps `..data` in one rename: the server must see the new set.
    mount = tmp_path / "mount"
    mount.mkdir()
    first = mount / "..2026_11_27_01"
    shutil.copytree(policy_dir, first)
    (mount / "..data").symlink_to(first.name)
    for f in sorted(first.iterdir()):
        (mount / f.name).symlink_to(f"..data/{f.name}")
    cfg = server_config(
        mount, {"store.bindings_file": str(bindings_file), "reload.debounce_ms": 50}
    )
    server = PdpServer(cfg)
    port = server.start()
    client = PdpClient(f"127.0.0.1:{port}", timeout=5)
    try:
        before = version(client)
        assert not client.check(ALICE, "write", DOC).allowed
        second = mount / "..2026_11_27_02"
        shutil.copytree(first, second)
        docs = second / "docs.pdp"
        docs.write_text(
            docs.read_text().replace("permit editor to write", "permit viewer to write"), "utf-8"
        )
        (mount / "..data_tmp").symlink_to(second.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        wait_for(lambda: version(client) != before, what="the swapped-in set")
        assert client.check(ALICE, "write", DOC).allowed
        assert client.server_info().last_reload.ok
    finally:
        client.close()
        server.stop(0.5)


def test_only_the_policies_and_the_named_files_count_as_changes(tmp_path: Path) -> None:
    # A bindings file may sit in a busy directory (/tmp): its neighbours are not news.
    import watchfiles

    from pdp.server.reload import Reloader
    from pdp.server.roles import BindingsFileBackend
    from pdp.server.state import ServingState

    (tmp_path / "policies").mkdir()
    bindings = tmp_path / "bindings.yaml"
    state = ServingState(str(tmp_path / "policies"), "", BindingsFileBackend(bindings))
    relevant = Reloader(state)._relevant
    root = tmp_path.resolve()
    added = watchfiles.Change.added
    assert relevant(added, str(root / "policies" / "docs.pdp"))
    assert relevant(added, str(root / "bindings.yaml"))
    assert not relevant(added, str(root / "other.txt"))
    assert not relevant(added, str(root / "scratch" / "x.yaml"))


def test_retries_while_not_serving_do_not_repeat_the_same_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from collections.abc import Collection

    from pdp.server.roles import BindingsFileBackend
    from pdp.server.state import RoleBackend, RoleBackendError, Roles, ServingState

    class Down(RoleBackend):
        watch = None
        description = "a store that is down"
        up = False

        def load(self, known_roles: Collection[str]) -> Roles:
            if not self.up:
                raise RoleBackendError("cannot reach the database")
            return BindingsFileBackend(Path(__file__).parents[2] / "examples/bindings.yaml").load(
                known_roles
            )

    shutil.copytree(Path(__file__).parents[2] / "policies", tmp_path / "p")
    down = Down()
    state = ServingState(str(tmp_path / "p"), "", down)
    caplog.set_level("INFO", logger="pdp.server")
    for _ in range(3):  # what the reloader does every 2 s until the store answers
        state.load_all()
    assert not state.ready
    messages = [r.getMessage() for r in caplog.records]
    assert sum("policies loaded" in m for m in messages) == 1
    assert sum("loading bindings failed" in m for m in messages) == 1
    # Up, then down again: that failure is news, and is logged.
    down.up = True
    assert state.load_all() and state.ready
    down.up = False
    state.reload_roles()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("loading bindings failed" in m for m in messages) == 2


def test_a_bindings_file_in_a_configmap_mount_reloads_on_every_update(
    tmp_path: Path, policy_dir: Path, bindings_file: Path
) -> None:
    # The file is a link through `..data` into a timestamped directory, which the next
    # update deletes: the server must keep watching the mount, not that directory.
    mount = tmp_path / "bindings"
    mount.mkdir()

    def publish(n: int, text: str) -> None:
        target = mount / f"..2026_11_27_0{n}"
        target.mkdir()
        (target / "bindings.yaml").write_text(text, "utf-8")
        (mount / "..data_tmp").symlink_to(target.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        if n > 1:
            shutil.rmtree(mount / f"..2026_11_27_0{n - 1}")

    original = bindings_file.read_text()
    publish(1, original)
    (mount / "bindings.yaml").symlink_to("..data/bindings.yaml")
    cfg = server_config(
        policy_dir,
        {
            "store.bindings_file": str(mount / "bindings.yaml"),
            "reload.debounce_ms": 50,
            "audit.sink": "none",
        },
    )
    server = PdpServer(cfg)
    port = server.start()
    client = PdpClient(f"127.0.0.1:{port}", timeout=5)
    try:
        seen = [client.server_info().bindings_version]
        for n, text in ((2, original + "\n# update 2\n"), (3, original + "\n# update 3\n")):
            publish(n, text)
            wait_for(
                lambda: client.server_info().bindings_version not in seen,
                what=f"update {n} of the bindings",
            )
            seen.append(client.server_info().bindings_version)
        assert len(set(seen)) == 3
    finally:
        client.close()
        server.stop(0.5)


def test_edits_before_the_watch_began_are_caught_up(policy_dir: Path, bindings_file: Path) -> None:
    # Loaded, then edited before the reloader watches: no event will ever come for
    # these edits, so the reloader loads once more when its watch is in place.
    from pdp.server.reload import Reloader
    from pdp.server.roles import BindingsFileBackend
    from pdp.server.state import ServingState

    state = ServingState(str(policy_dir), "", BindingsFileBackend(bindings_file))
    assert state.load_all() and state.snapshot is not None
    policy, roles = state.snapshot.policy.version, state.snapshot.roles.version()
    docs = policy_dir / "docs.pdp"
    docs.write_text(docs.read_text() + "\n# edited\n", encoding="utf-8")
    bindings_file.write_text(bindings_file.read_text() + "\n# edited\n", encoding="utf-8")
    reloader = Reloader(state, retry_seconds=0.2)
    reloader.start()
    try:
        snap = wait_for(
            lambda: (
                (s := state.snapshot) is not None
                and s.policy.version != policy
                and s.roles.version() != roles
                and s
            ),
            what="the edits to be loaded",
        )
        assert snap.policy_files == 3
    finally:
        reloader.stop()


def test_a_policy_file_whose_link_is_broken_fails_the_reload(running: Running) -> None:
    # Skipped, the file's rules (its forbids too) would vanish without a word.
    client = running.client
    good = version(client)
    docs = running.policy_dir / "docs.pdp"
    docs.unlink()
    docs.symlink_to(running.policy_dir / "gone" / "docs.pdp")
    info = wait_for(lambda: failed_reload(client), what="the failed reload")
    assert info.policy_version == good and info.last_reload.what == "policies"
    assert "docs.pdp" in info.last_reload.errors[0]
    assert client.check(ALICE, "read", DOC).policy_version == good


def test_a_bindings_file_granting_a_derived_role_is_refused(running: Running) -> None:
    # `owner` comes from a condition: a binding cannot grant it (as `pdp check` says).
    client = running.client
    good = client.server_info().bindings_version
    text = running.bindings_file.read_text()
    running.bindings_file.write_text(
        text + "  - {subject: user:mallory, role: owner, scope: global}\n", encoding="utf-8"
    )
    info = wait_for(lambda: failed_reload(client), what="the refused bindings")
    assert info.last_reload.what == "bindings" and info.bindings_version == good
    assert "role `owner` is a derived role" in info.last_reload.errors[0]
