"""What the server decides with, and how it is (re)loaded without stopping.

`ServingState` holds the compiled policy set, the role source and (with the Envoy
endpoint on) the route table as one immutable `Snapshot`. A call reads the snapshot
once, so a reload in the middle of a call changes nothing for it; a reload builds a
whole new snapshot in the background and swaps it in with one reference assignment.
A reload that fails keeps the last good snapshot and is reported (logged with
positions, and in ServerInfo).

The route table is read with the policies, every time they are (re)loaded or the
route file changes: a bad one keeps the last good table, reported like bad
policies (`what: "routes"`). Until a first good table is loaded `routes` is None
and the Envoy endpoint is not serving, while pdp.v1 is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pdp.engine.bindings import RoleSource
from pdp.engine.compile import CompiledPolicySet, compile_policy_set
from pdp.envoy.routes import RouteTable, RouteTableError, load_routes
from pdp.lang.errors import PolicyLoadError
from pdp.lang.load import content_hash, discover, load_texts
from pdp.lang.schema import load_schema
from pdp.store.validate import RoleCatalog

log = logging.getLogger("pdp.server")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one (re)load of policies or bindings."""

    ok: bool
    at: datetime
    what: str  # "policies", "bindings" or "routes"
    policy_version: str  # loaded (ok) or rejected; "" when not even hashed
    errors: tuple[str, ...] = ()
    bindings_version: str = ""  # "bindings", ok: the version loaded, when known


_PARTS = ("policies", "bindings", "routes")


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

    def load(self, known_roles: RoleCatalog) -> Roles:
        """Open or re-read the role source; RoleBackendError when it cannot be used.

        `known_roles`: the roles a binding may grant (the declared ones)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; called once at shutdown."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: CompiledPolicySet
    roles: Roles
    policy_files: int
    routes: RouteTable | None = None  # None: no Envoy endpoint, or no good table yet


class ServingState:
    """The current snapshot, the last reload result, and the reload procedure."""

    def __init__(
        self,
        policies: str,
        schema: str,
        backend: RoleBackend,
        *,
        routes: Path | None = None,
    ) -> None:
        self.policies_dir = Path(policies)
        self.schema_path = Path(schema) if schema else None
        self.routes_path = routes
        self.backend = backend
        # INVARIANT: replaced whole, never mutated; readers take one reference per call.
        self.snapshot: Snapshot | None = None
        self._reloads: dict[str, ReloadResult] = {}  # the latest of each part, by `what`
        self._lock = threading.RLock()  # one (re)load at a time
        # What was last logged, so that retries while not serving (every 2 s) do not
        # repeat the same lines: per part that failed, (text, monotonic time) of its
        # last failure, forgotten when it loads again; and the last version announced.
        self._logged_failures: dict[str, tuple[str, float]] = {}  # by what failed
        self._announced = ""
        self._listeners: list[Callable[[bool], None]] = []
        self._watchers: list[Callable[[Snapshot], None]] = []

    def on_ready_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(ready)` whenever the state goes from not ready to ready."""
        self._listeners.append(listener)

    def on_swap(self, watcher: Callable[[Snapshot], None]) -> None:
        """Call `watcher(snapshot)` after every swap (e.g. to follow the route table)."""
        self._watchers.append(watcher)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    @property
    def reloads(self) -> tuple[ReloadResult, ...]:
        """The latest reload of each part (policies, bindings, routes), in that order."""
        return tuple(self._reloads[w] for w in _PARTS if w in self._reloads)

    @property
    def last_reload(self) -> ReloadResult | None:
        """The latest failure of a part that still fails, else the latest reload: a part
        that failed stays visible until it loads again, whatever reloads after it."""
        results = self.reloads
        failing = [r for r in results if not r.ok]
        return max(failing or results, key=lambda r: r.at, default=None)

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
            routes = self._routes(policy, base.routes if base is not None else None)
            self._swap(Snapshot(policy, roles, files, routes))
            return True

    def reload_policies(self) -> ReloadResult | None:
        """Re-read the policy files; keep the last good set when the new one fails."""
        with self._lock:
            if self.snapshot is None:
                # Not serving yet (the first load failed): try everything again.
                self.load_all()
                return self.last_reload
            policy, files = self._load_policies()
            if policy is None:
                return self.last_reload
            routes = self._routes(policy, self.snapshot.routes)
            if policy is not self.snapshot.policy or routes is not self.snapshot.routes:
                self._swap(replace(self.snapshot, policy=policy, policy_files=files, routes=routes))
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
            errors = [e.render() for e in result.errors]
            if not files:  # the error itself cannot know which directory was empty
                errors = [f"{self.policies_dir}: {e}" for e in errors]
            self._failed("policies", version, errors, now)
            return None, 0
        policy = compile_policy_set(result.policy_set)
        last = self._reloads.get("policies")
        failed_before = last is not None and not last.ok
        self._logged_failures.pop("policies", None)  # the next failure is news again
        for w in result.warnings:
            log.warning("%s", w.render())
        if policy.version != self._announced:
            self._announced = policy.version
            log.info(
                "policies loaded from %s: %s (%d files)",
                self.policies_dir,
                policy.version,
                len(result.sources),
            )
        elif failed_before:  # fixed back to what is served: the error is over, say so
            log.info("policy files are valid again; serving %s", policy.version)
        # Published after the log lines: whoever sees it in ServerInfo finds them written.
        self._reloads["policies"] = ReloadResult(True, now, "policies", policy.version)
        return policy, len(result.sources)

    def _routes(self, policy: CompiledPolicySet, last: RouteTable | None) -> RouteTable | None:
        """The route table read now, or `last` (the last good one) when it is bad."""
        if self.routes_path is None:
            return None
        now = datetime.now(UTC)
        try:
            table = load_routes(self.routes_path)
        except RouteTableError as exc:
            errors = [f"{exc.source}: {p}" for p in exc.problems]
            keeping = "keeping the last good route table" if last else "Envoy checks unavailable"
            log.error("loading routes failed; %s:\n%s", keeping, "\n".join(errors))
            self._reloads["routes"] = ReloadResult(
                False, now, "routes", policy.version, tuple(errors)
            )
            return last
        self._reloads["routes"] = ReloadResult(True, now, "routes", policy.version)
        for note in route_warnings(table, policy):
            log.warning("%s", note)
        if last is None or [r.name for r in last.routes] != [r.name for r in table.routes]:
            log.info("route table loaded from %s: %d routes", self.routes_path, len(table))
        return table

    def _load_roles(self, policy: CompiledPolicySet) -> Roles | None:
        now = datetime.now(UTC)
        # Only declared roles can be granted; derived ones come from conditions, and a
        # binding naming one is refused with that reason (as `pdp check` does).
        known = RoleCatalog(frozenset(policy.roles), frozenset(n for n, _ in policy.derived))
        try:
            roles = self.backend.load(known)
        except RoleBackendError as exc:
            self._failed("bindings", policy.version, [str(exc)], now)
            return None
        self._logged_failures.pop("bindings", None)
        version = roles.version()
        log.info(
            "role bindings from %s, version %s",
            self.backend.description,
            version or "known after the first lookup",
        )
        self._reloads["bindings"] = ReloadResult(
            True, now, "bindings", policy.version, bindings_version=version
        )  # after the log line, as for policies
        return roles

    def _failed(self, what: str, version: str, errors: list[str], now: datetime) -> None:
        if self.snapshot is None:
            keeping = "; not serving until this is fixed"
        elif what == "bindings":
            serving = self.snapshot.roles.version() or "its version not known yet"
            keeping = f"; still serving the last good bindings ({serving})"
        else:
            keeping = f"; still serving policy_version {self.snapshot.policy.version}"
        text = f"loading {what} failed{keeping}:\n" + "\n\n".join(errors)
        last, at = self._logged_failures.get(what, ("", 0.0))
        if text != last or time.monotonic() - at > 60:  # a retry's same failure: once a minute
            self._logged_failures[what] = (text, time.monotonic())
            log.error("%s", text)
        # After the log line: whoever sees the failure in ServerInfo finds it logged.
        self._reloads[what] = ReloadResult(False, now, what, version, tuple(errors))

    def _swap(self, snap: Snapshot) -> None:
        was_ready = self.snapshot is not None
        self.snapshot = snap
        if not was_ready:
            for listener in self._listeners:
                listener(True)
        for watcher in self._watchers:
            watcher(snap)


def route_warnings(table: RouteTable, policy: CompiledPolicySet) -> list[str]:
    """Routes that name a resource type or action the policies do not declare.

    Warnings, not errors: such a route is denied (as the engine denies an unknown
    action), and refusing the whole table over it would also drop every good route.
    """
    out: list[str] = []
    for r in table.routes:
        declared = policy.actions.get(r.resource_type)
        if declared is None:
            out.append(
                f"{table.source}: route `{r.name}`: resource type `{r.resource_type}` "
                "is not declared in the policies; its requests are denied"
            )
        elif r.action not in declared:
            out.append(
                f"{table.source}: route `{r.name}`: `{r.resource_type}` has no action "
                f"`{r.action}`; its requests are denied"
            )
    return out
