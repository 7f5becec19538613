"""The two places roles can come from: a bindings YAML file, or the SQL store.

`pdp.server.app.role_backend` picks one at start-up; nothing else in the server knows
which it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pdp.server.state import RoleBackend, RoleBackendError, Roles
from pdp.store.validate import RoleCatalog


class BindingsFileBackend(RoleBackend):
    """Bindings held in memory, read from a YAML file and re-read when it changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.watch = self.path
        self.description = f"bindings file {self.path}"

    def load(self, known_roles: RoleCatalog) -> Roles:
        from pdp.store.document import DocumentError, load_bindings_file

        try:
            data = self.path.read_bytes()
            bindings = load_bindings_file(self.path, known_roles)
        except OSError as exc:
            raise RoleBackendError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        except DocumentError as exc:
            raise RoleBackendError(str(exc)) from None
        version = "sha256:" + hashlib.sha256(data).hexdigest()[:16]
        return Roles(bindings, lambda: version)


class SqlStoreBackend(RoleBackend):
    """The SQL store (SQLite or PostgreSQL) behind the PDP's cache of it.

    The cache follows the store's revision by itself (polling, or LISTEN/NOTIFY on
    PostgreSQL), so nothing here is watched; the revision is the bindings_version.
    """

    def __init__(
        self, url: str, *, poll_interval: float = 1.0, max_staleness: float = 30.0
    ) -> None:
        from pdp.store.config import redact

        self.url = url
        self.poll_interval = poll_interval
        self.max_staleness = max_staleness
        self.description = f"store {redact(url)}"
        self._store: object | None = None
        self._cache: object | None = None

    def load(self, known_roles: RoleCatalog) -> Roles:
        # Imported here: SQLAlchemy and the drivers load only when the store is used.
        from pdp.store.cache import CachedRoleSource
        from pdp.store.errors import StoreError
        from pdp.store.sql import SqlStore

        if self._cache is not None:
            raise RoleBackendError("the store is already open")
        try:
            store = SqlStore(self.url)
        except StoreError as exc:
            raise RoleBackendError(exc.message) from None
        except Exception as exc:
            # Anything else (a driver's own error) is still one line, never a dead
            # loading thread and a server that listens but never serves.
            from pdp.store.config import redact, redact_text

            first = str(exc).strip().splitlines()
            reason = redact_text(first[0]) if first else type(exc).__name__
            raise RoleBackendError(
                f"the store at {redact(self.url)} cannot be opened: {reason}"
            ) from None
        cache = CachedRoleSource(
            store, poll_interval=self.poll_interval, max_staleness=self.max_staleness
        ).start()
        self._store, self._cache = store, cache

        def version() -> str:
            return cache.bindings_version or ""

        return Roles(cache, version)

    def close(self) -> None:
        from pdp.store.cache import CachedRoleSource
        from pdp.store.sql import SqlStore

        if isinstance(self._cache, CachedRoleSource):
            self._cache.close()
        if isinstance(self._store, SqlStore):
            self._store.close()
        self._store = self._cache = None
