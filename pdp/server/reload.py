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
import os
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
        self._schema = _named(state.schema_path)
        self._routes = _named(state.routes_path)
        self._bindings = _named(state.backend.watch)
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
        # The directory a file was named in, not where its links led at start-up: in a
        # ConfigMap mount that target directory is deleted by the next update.
        roots = {self._policies}
        for named in (self._schema, self._bindings, self._routes):
            if named:
                roots.add(named[0].parent)
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
        caught_up = False
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
            if caught_up is False:
                # What changed after the files were loaded and before this watch began
                # sent no event: load once more now that changes are seen (unchanged
                # files compile from the cache, and nothing is swapped).
                caught_up = True
                if self._state.ready:
                    self._state.reload_policies()
                    if self._bindings:
                        self._state.reload_roles()
            if not changes:  # a timeout
                self._retry_if_not_ready()
                continue
            paths = {Path(p) for _, p in changes}
            if any(self._is_policy(p) for p in paths):
                log.info("policy files changed; reloading")
                self._state.reload_policies()
            if any(_changes(p, self._bindings) for p in paths):
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
        return p.is_relative_to(self._policies) or any(
            _changes(p, named) for named in (self._schema, self._bindings, self._routes)
        )

    def _is_policy(self, p: Path) -> bool:
        if _changes(p, self._schema) or _changes(p, self._routes):
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


def _named(path: Path | None) -> tuple[Path, ...]:
    """The paths a named file's changes may be reported at: as named (made absolute),
    then as it resolved at start-up. None: no such file."""
    if path is None:
        return ()
    return tuple(dict.fromkeys((Path(os.path.abspath(path)), path.resolve())))


def _changes(p: Path, named: tuple[Path, ...]) -> bool:
    """Whether a change at `p` is a change of the named file: the file itself, or a
    hidden `..` entry beside it (a ConfigMap update swaps `..data`; the file is a link)."""
    return any(p == f or (p.parent == f.parent and p.name.startswith("..")) for f in named)
