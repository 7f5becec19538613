"""Bearer token revocations answered from memory, from a list re-read in the background.

`RevocationCache` is the `RevocationCheck` of a `JwtResolver` over any loader of the
(small) revocation list; the server gives it `SqlTokenRevocations.snapshot`. Tokens
are not looked up one by one: the whole list is read, kept, and re-read.

- fresh (younger than `refresh_interval`): answered from memory, no lock, no wait.
  This is the path nearly every check takes;
- older, but within `max_staleness`: answered from memory while a re-read runs in the
  background (one at a time), so a slow database never holds up a check;
- no list yet, or one older than `max_staleness` (the first check, or the first after
  a quiet spell): the check waits for a re-read, at most `wait` seconds, and is
  refused (`RevocationUnavailable`, audited as `store_unavailable`) only when that
  re-read fails or is not done in time. A healthy store never causes a deny: the list
  was merely old, not wrong.

A re-read that is already under way is joined rather than repeated, and nobody waits
for one past `wait` seconds from its start: while the database hangs, checks are
refused at once instead of piling up on the server's threads.

Freshness: a revocation applies within `refresh_interval` plus one read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

log = logging.getLogger("pdp.identity")


class RevocationUnavailable(Exception):
    """The revocation list could not be read recently enough: the token is refused."""


class RevocationList(Protocol):
    """One read of the list: what it says about a verified token."""

    def is_revoked(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool:
        """Whether this token (by `jti`, or by subject and issue time) is revoked."""
        ...


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A list and when the read that produced it started (conservative)."""

    revocations: RevocationList
    at: float


class _Read:
    """One read of the list under way; `done` is set when it has ended, either way."""

    __slots__ = ("done", "error", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.error = ""


class RevocationCache:
    """A `RevocationCheck` from memory over `load`; see the module docstring.

    Thread-safe. `spawn` runs a re-read (a daemon thread; tests run it inline).
    """

    def __init__(
        self,
        load: Callable[[], RevocationList],
        *,
        refresh_interval: float = 5.0,
        max_staleness: float = 60.0,
        wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], object]], None] | None = None,
        name: str = "token revocation list",
    ) -> None:
        if refresh_interval <= 0 or max_staleness < refresh_interval:
            raise ValueError("need 0 < refresh_interval <= max_staleness")
        if wait < 0:
            raise ValueError("`wait` must not be negative")
        self._load = load
        self._interval = refresh_interval
        self._max_staleness = max_staleness
        self._wait = wait
        self._clock = clock
        self._spawn = spawn or _daemon_thread
        self._name = name
        self._lock = threading.Lock()  # guards starting a read, never held during one
        # INVARIANT: each of these is replaced whole (one reference assignment), so a
        # reader that takes it once sees a consistent value without the lock.
        self._loaded: _Loaded | None = None
        self._reading: _Read | None = None

    def __call__(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool:
        return self._current().is_revoked(jti, subject, issued_at)

    @property
    def age(self) -> float | None:
        """Seconds since the list in hand was read; None before the first read."""
        loaded = self._loaded
        return None if loaded is None else self._clock() - loaded.at

    def refresh(self) -> None:
        """Read the list now, in this thread (raises when it cannot be read)."""
        started = self._clock()
        self._keep(self._load(), started)

    def _current(self) -> RevocationList:
        now = self._clock()
        loaded = self._loaded
        if loaded is not None and now - loaded.at < self._interval:
            return loaded.revocations  # the common path: one reference read
        read = self._start_read()
        loaded = self._loaded or loaded  # a read run inline (or just done) is newer
        if loaded is not None and now - loaded.at <= self._max_staleness:
            return loaded.revocations  # usable while the re-read runs in the background
        # Nothing usable in hand: decide only on a list read now, waiting boundedly.
        read.done.wait(max(0.0, read.started + self._wait - self._clock()))
        loaded = self._loaded
        if loaded is not None and self._clock() - loaded.at <= self._max_staleness:
            return loaded.revocations
        if read.done.is_set():
            why = read.error or "the read took too long"
            raise RevocationUnavailable(f"{self._name}: could not be read: {why}")
        raise RevocationUnavailable(f"{self._name}: not read within {self._wait:g} s")

    def _start_read(self) -> _Read:
        """The read under way, or a new one started in the background."""
        read = self._reading
        if read is not None:
            return read
        with self._lock:
            read = self._reading
            if read is not None:
                return read
            read = self._reading = _Read(self._clock())
        try:
            self._spawn(lambda: self._run(read))
        except BaseException as exc:  # no thread to run it: do not leave it "under way"
            self._end(read, str(exc) or type(exc).__name__)
            raise
        return read

    def _run(self, read: _Read) -> None:
        error = ""
        try:
            self._keep(self._load(), read.started)
        except Exception as exc:  # the copy in hand serves until it is too old
            error = str(exc) or type(exc).__name__
            log.warning("%s: could not be read: %s", self._name, error)
        finally:
            self._end(read, error)

    def _end(self, read: _Read, error: str) -> None:
        read.error = error
        with self._lock:
            if self._reading is read:
                self._reading = None
        read.done.set()

    def _keep(self, revocations: RevocationList, started: float) -> None:
        with self._lock:
            current = self._loaded
            if current is None or current.at <= started:  # never replace a newer read
                self._loaded = _Loaded(revocations, started)


def _daemon_thread(job: Callable[[], object]) -> None:
    threading.Thread(target=job, name="pdp-revocations", daemon=True).start()
