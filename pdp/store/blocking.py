"""Threads that must never wait on the database: the server's event loop.

The PDP answers decision calls on its event loop when everything they need is in
memory; a lookup that would have to ask the database there raises `WouldBlock`
instead, and the server answers that call again on its thread pool. So a cache hit
costs no hand-off between threads, and a slow query or a database outage holds one
pool thread, never every call.
"""

from __future__ import annotations

import threading

_thread = threading.local()


class WouldBlock(Exception):
    """A lookup needs I/O on a thread that must not wait: retry the call elsewhere.

    Deliberately not a `StoreError`: it must never become a deny.
    """


def forbid_blocking() -> None:
    """Mark the calling thread (an event loop's) as one that must never wait on I/O."""
    _thread.forbidden = True


def check_may_block() -> None:
    """Raise `WouldBlock` on a thread marked by `forbid_blocking`; else nothing."""
    if getattr(_thread, "forbidden", False):
        raise WouldBlock
