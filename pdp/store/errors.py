"""Errors of the bindings store: one base type, a stable `code`, a message fit for people.

This module imports nothing heavy (no SQLAlchemy), so `pdp.evaluation` can catch
`StoreUnavailable` without pulling the database layer into the engine's callers.
"""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed; `message` is one lowercase line, user input in backticks."""

    code = "store_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class StoreUnavailable(StoreError):
    """The database cannot be reached (or has not been for longer than the staleness bound).

    The PDP turns this into a deny with diagnostic `store_unavailable`: missing data
    never allows.
    """

    code = "store_unavailable"


class InvalidInput(StoreError):
    """A write was refused before anything changed: bad subject, scope, role, expiry, cycle."""

    code = "invalid_input"


class NotFound(StoreError):
    """The binding, membership or subject named does not exist."""

    code = "not_found"


class SchemaNotReady(StoreError):
    """The database has no pdp schema, or an older one: `pdp db upgrade` fixes it."""

    code = "schema_not_ready"
