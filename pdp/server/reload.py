"""Hot reload: one background thread watches the policy files (and a bindings file,
and the Envoy route table, which is reloaded with the policies).

Changes are debounced (an editor's save is several events; a `git checkout` many),
then the policies, or the bindings, are loaded, validated and compiled off the
serving path and swapped in by `ServingState`. While the server is not ready (the
first load failed, or the store could not be reached) the thread also retries the
whole load every `retry_seconds`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

import watchfiles

from pdp.lang.load import POLICY_SUFFIX
from pdp.server.state import ServingState

log = logging.getLogger("pdp.server")


class Reloader:
    """Start with `start()`, end with `stop()`; never raises into the server."""

    def __init__(
        self,
        state: ServingState,
        *,
        debounce_ms: int = 200,
        retry_seconds: float = 2.0,
        watch: bool = True,
        ignore: Collection[Path] = (),
    ) -> None:
        self._state = state
        self._debounce = debounce_ms
        self._retry_ms = int(retry_seconds * 1000)
        self._watch = watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._policies = state.policies_dir.resolve()
        self._schema = state.schema_path.resolve() if state.schema_path else None
        self._routes = state.routes_path.resolve() if state.routes_path else None
        bindings = state.backend.watch
        self._bindings = bindings.resolve() if bindings else None
        # Directories written while serving (the audit log, next to a bindings file by
        # default): their changes are never ours to reload, nor to log.
        self._ignore = tuple(p.resolve() for p in ignore)
        self._default_filter = watchfiles.DefaultFilter()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pdp-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _roots(self) -> list[Path]:
        # Directories, not files: editors replace a file by renaming a new one over it.
        roots = {self._policies}
        for f in (self._schema, self._bindings, self._routes):
            if f is not None:
                roots.add(f.parent)
        return sorted(r for r in roots if r.exists())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch_until_stopped()
            except Exception:
                # E.g. the policies directory was removed: keep serving, retry later.
                log.warning("watching policy files failed; retrying", exc_info=True)
                self._stop.wait(self._retry_ms / 1000)

    def _watch_until_stopped(self) -> None:
        roots = self._roots() if self._watch else []
        if not roots:
            while not self._stop.wait(self._retry_ms / 1000):
                self._retry_if_not_ready()
                if self._watch and self._roots():
                    return
            return
        for changes in watchfiles.watch(
            *roots,
            watch_filter=self._relevant,
            debounce=self._debounce,
            step=min(50, self._debounce),
            stop_event=self._stop,
            rust_timeout=self._retry_ms,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if not changes:  # a timeout
                self._retry_if_not_ready()
                continue
            paths = {Path(p) for _, p in changes}
            if any(self._is_policy(p) for p in paths):
                log.info("policy files changed; reloading")
                self._state.reload_policies()
            if self._bindings is not None and self._bindings in paths:
                log.info("bindings file changed; reloading")
                self._state.reload_roles()
            if set(self._roots()) != set(roots):
                return  # a watched directory appeared or went: watch the new set

    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        if not self._default_filter(change, path):
            return False
        p = Path(path)
        if self._ignore and any(p.is_relative_to(i) for i in self._ignore):
            return False
        # A watched file's directory may be busy (a bindings file in /tmp): only the
        # policies and the named files count.
        return p.is_relative_to(self._policies) or p in (self._schema, self._bindings, self._routes)

    def _is_policy(self, p: Path) -> bool:
        if p == self._schema or p == self._routes:
            return True
        if not p.is_relative_to(self._policies):
            return False
        # A deleted directory is reported by its own path, without a suffix. Hidden
        # entries count too: a ConfigMap update is a swap of its `..data` link.
        return (
            p.suffix == POLICY_SUFFIX
            or p == self._policies
            or not p.suffix
            or any(part.startswith(".") for part in p.relative_to(self._policies).parts)
        )

    def _retry_if_not_ready(self) -> None:
        if not self._state.ready:
            self._state.load_all()
