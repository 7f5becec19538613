"""What the server decides with, and how it is (re)loaded without stopping.

`ServingState` holds the compiled policy set and the role source as one immutable
`Snapshot`. A call reads the snapshot once, so a reload in the middle of a call
changes nothing for it; a reload builds a whole new snapshot in the background and
swaps it in with one reference assignment. A reload that fails keeps the last good
snapshot and is reported (logged with positions, and in ServerInfo).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pdp.engine.bindings import RoleSource
from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.lang.errors import PolicyLoadError
from pdp.lang.load import content_hash, discover, load_texts
from pdp.lang.schema import load_schema

log = logging.getLogger("pdp.server")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one (re)load of policies or bindings."""

    ok: bool
    at: datetime
    what: str  # "policies" or "bindings"
    policy_version: str  # loaded (ok) or rejected; "" when not even hashed
    errors: tuple[str, ...] = ()


class RoleBackendError(Exception):
    """The role source could not be opened or (re)loaded; one line for people."""


@dataclass(frozen=True, slots=True)
class Roles:
    """A role source and how to tell its version (the SQL store's changes under us)."""

    source: RoleSource
    version: Callable[[], str]


class RoleBackend:
    """Where roles come from; chosen once at start-up in `pdp.server.app`."""

    #: a file whose changes mean `load` should run again; None when nothing to watch
    watch: Path | None = None
    description: str = ""

    def load(self, known_roles: Collection[str]) -> Roles:
        """Open or re-read the role source; RoleBackendError when it cannot be used."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; called once at shutdown."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: CompiledPolicySet
    roles: Roles
    policy_files: int


class ServingState:
    """The current snapshot, the last reload result, and the reload procedure."""

    def __init__(self, policies: str, schema: str, backend: RoleBackend) -> None:
        self.policies_dir = Path(policies)
        self.schema_path = Path(schema) if schema else None
        self.backend = backend
        # INVARIANT: replaced whole, never mutated; readers take one reference per call.
        self.snapshot: Snapshot | None = None
        self.last_reload: ReloadResult | None = None
        self._lock = threading.RLock()  # one (re)load at a time
        self._listeners: list[Callable[[bool], None]] = []

    def on_ready_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` whenever the state goes from not ready to ready."""
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    def load_all(self) -> bool:
        """Load policies, then the role source; True when both are ready."""
        with self._lock:
            policy, files = self._load_policies()
            base = self.snapshot
            if policy is None:
                return base is not None
            roles = base.roles if base is not None else self._load_roles(policy)
            if roles is None:
                return base is not None
            self._swap(Snapshot(policy, roles, files))
            return True

    def reload_policies(self) -> ReloadResult | None:
        """Re-read the policy files; keep the last good set when the new one fails."""
        with self._lock:
            if self.snapshot is None:
                # Not serving yet (the first load failed): try everything again.
                self.load_all()
                return self.last_reload
            policy, files = self._load_policies()
            if policy is not None and policy is not self.snapshot.policy:
                self._swap(replace(self.snapshot, policy=policy, policy_files=files))
            return self.last_reload

    def reload_roles(self) -> ReloadResult | None:
        """Re-read the role source (a bindings file that changed); keep the last on failure."""
        with self._lock:
            current = self.snapshot
            if current is None:
                return None
            roles = self._load_roles(current.policy)
            if roles is not None:
                self._swap(replace(current, roles=roles))
            return self.last_reload

    # --- steps --------------------------------------------------------------------------

    def _load_policies(self) -> tuple[CompiledPolicySet | None, int]:
        now = datetime.now(UTC)
        try:
            schema = load_schema(self.schema_path) if self.schema_path else None
            files = discover([self.policies_dir])
            result = load_texts(files, schema)
        except PolicyLoadError as exc:  # the schema file
            self._failed("policies", "", [e.render() for e in exc.errors], now)
            return None, 0
        except OSError as exc:
            name = exc.filename or self.policies_dir
            msg = f"cannot read {name}: {exc.strerror or exc}"
            self._failed("policies", "", [msg], now)
            return None, 0
        if result.policy_set is None:
            version = content_hash(files)
            self._failed("policies", version, [e.render() for e in result.errors], now)
            return None, 0
        policy = compile_policy_set(result.policy_set)
        self.last_reload = ReloadResult(True, now, "policies", policy.version)
        for w in result.warnings:
            log.warning("%s", w.render())
        if self.snapshot is None or self.snapshot.policy.version != policy.version:
            log.info(
                "policies loaded from %s: %s (%d files)",
                self.policies_dir,
                policy.version,
                len(result.sources),
            )
        return policy, len(result.sources)

    def _load_roles(self, policy: CompiledPolicySet) -> Roles | None:
        now = datetime.now(UTC)
        known = set(policy.roles) | {name for name, _ in policy.derived}
        try:
            roles = self.backend.load(known)
        except RoleBackendError as exc:
            self._failed("bindings", policy.version, [str(exc)], now)
            return None
        self.last_reload = ReloadResult(True, now, "bindings", policy.version)
        log.info(
            "role bindings from %s, version %s",
            self.backend.description,
            roles.version() or "known after the first lookup",
        )
        return roles

    def _failed(self, what: str, version: str, errors: list[str], now: datetime) -> None:
        self.last_reload = ReloadResult(False, now, what, version, tuple(errors))
        keeping = (
            f"; still serving policy_version {self.snapshot.policy.version}"
            if self.snapshot
            else "; not serving until this is fixed"
        )
        log.error("loading %s failed%s:\n%s", what, keeping, "\n\n".join(errors))

    def _swap(self, snap: Snapshot) -> None:
        was_ready = self.snapshot is not None
        self.snapshot = snap
        if not was_ready:
            for listener in self._listeners:
                listener(True)
