"""The `RoleSource` the PDP uses: store lookups cached, dropped when the store changes.

Freshness. Every entry is tagged with the store revision it was read at, and the
whole cache is dropped as soon as a newer revision is seen, by whichever comes
first:

- PostgreSQL `LISTEN pdp_store` (the writer's `NOTIFY` arrives at commit);
- polling the revision every `poll_interval` seconds (any database; default 1 s);
- a cache miss whose query returns a newer revision than the one known.

So two replicas sharing a database see a revoke within `poll_interval`, and within
milliseconds on PostgreSQL.

Expiry. A binding can expire while cached. Entries keep each role's expiry and
filter by the request's `now` on every hit; an entry read "as of" a time later
than a request's `now` is not used for it (that request goes to the database).

Outage. Each successful poll or query confirms the cache. While the database
cannot be reached, cached entries are still served for `max_staleness` seconds
after the last confirmation; misses fail at once. Past the bound every lookup
raises `StoreUnavailable` (the PDP denies with `store_unavailable`; missing data
never allows). When the database answers again the watcher notices within
`poll_interval`, drops the cache if the revision moved, and lookups resume.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from cachetools import LRUCache

from pdp.store.blocking import check_may_block
from pdp.store.errors import StoreError, StoreUnavailable
from pdp.store.sql import NOTIFY_CHANNEL, Lookup, SqlStore, short_reason

T = TypeVar("T")
log = logging.getLogger("pdp.store")


@dataclass(frozen=True, slots=True)
class _Entry:
    revision: int
    as_of: datetime  # the `now` the query filtered expiry with
    fixed: frozenset[str]  # roles bound without expiry
    expiring: tuple[tuple[str, datetime], ...]

    @classmethod
    def of(cls, lookup: Lookup, now: datetime) -> _Entry:
        fixed = frozenset(r for r, exp in lookup.rows if exp is None)
        expiring = tuple((r, exp) for r, exp in lookup.rows if exp is not None)
        return cls(lookup.revision, now, fixed, expiring)

    def roles(self, now: datetime) -> frozenset[str]:
        if not self.expiring:
            return self.fixed
        return self.fixed | {r for r, exp in self.expiring if exp > now}


@dataclass(frozen=True)
class CacheStatus:
    """For health checks and logs."""

    state: str  # "fresh" | "stale" (serving from cache, database down) | "unavailable"
    revision: int | None
    seconds_since_confirmed: float | None
    last_error: str | None
    entries: int
    hits: int
    misses: int
    invalidations: int


class CachedRoleSource:
    """A thread-safe, cached `RoleSource` over a `SqlStore`; call `start()` to watch."""

    def __init__(
        self,
        store: SqlStore,
        *,
        poll_interval: float = 1.0,
        max_staleness: float = 30.0,
        maxsize: int = 100_000,
        listen: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.max_staleness = max_staleness
        self.listen = listen and store.is_postgresql
        self._clock = clock
        self._lock = threading.Lock()
        self._roles: LRUCache[tuple[str, tuple[str, ...]], _Entry] = LRUCache(maxsize)
        self._attrs: LRUCache[str, tuple[int, Mapping[str, Any]]] = LRUCache(maxsize)
        self._revision: int | None = None
        self._generation = store.generation  # see SqlStore.generation
        self._confirmed = float("-inf")  # clock() of the last successful contact
        self._down = False
        self._down_since = 0.0
        self._past_bound = False  # logged that the staleness bound has passed
        self._last_error: str | None = None
        # Guards the up/down transitions, so each is logged once, never per call.
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self.hits = self.misses = self.invalidations = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CachedRoleSource:
        """Start the watcher thread (LISTEN on PostgreSQL, polling everywhere)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="pdp-store-watch", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the watcher; the store itself is left open (its owner closes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_interval + 5)
            self._thread = None
        self._close_listener()

    def __enter__(self) -> CachedRoleSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ RoleSource

    def roles_for(self, subject: str, scopes: Sequence[str], now: datetime) -> frozenset[str]:
        """Held roles of `subject` (and its groups) in `scopes` at `now`; cached."""
        key = (subject, tuple(scopes))
        with self._lock:
            entry = self._roles.get(key)
        if entry is not None and now >= entry.as_of and self._usable():
            self.hits += 1
            return entry.roles(now)
        self._before_query()
        self.misses += 1
        generation = self.store.generation
        lookup = self._query(lambda: self.store.lookup(subject, key[1], now))
        entry = _Entry.of(lookup, now)
        with self._lock:
            if self._observe(lookup.revision, authoritative=False, generation=generation):
                self._roles[key] = entry
        return entry.roles(now)

    def attributes(self, subject: str) -> Mapping[str, Any]:
        """Stored (trusted) attributes of `subject`; cached like roles."""
        with self._lock:
            cached = self._attrs.get(subject)
        if cached is not None and self._usable():
            self.hits += 1
            return cached[1]
        self._before_query()
        self.misses += 1
        generation = self.store.generation
        # INVARIANT: the revision is read before the attributes, so the tag can only be
        # older than the data: a change in between makes the next poll drop the entry.
        revision = self._query(self.store.revision)
        attrs = self._query(lambda: self.store.attributes(subject))
        with self._lock:
            if self._observe(revision, authoritative=False, generation=generation):
                self._attrs[subject] = (revision, attrs)
        return attrs

    @property
    def bindings_version(self) -> str | None:
        """The store revision the cache is current with, reported with each decision."""
        rev = self._revision
        return None if rev is None else str(rev)

    # ------------------------------------------------------------------ freshness

    def invalidate(self) -> None:
        """Drop every cached entry."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._roles.clear()
        self._attrs.clear()
        self.invalidations += 1

    def _usable(self) -> bool:
        """Cached entries may be served: confirmed recently enough."""
        return self._clock() - self._confirmed <= self.max_staleness

    def _before_query(self) -> None:
        """Fail at once rather than queue requests on a database known to be down.

        On the server's event loop, raise `WouldBlock`: the call is answered again on
        the thread pool, where waiting for the database holds only one thread.
        """
        check_may_block()
        if not self._down:
            return
        age = self._clock() - self._confirmed
        if age > self.max_staleness:
            with self._state_lock:
                first, self._past_bound = not self._past_bound, True
            if first:
                log.warning(
                    "the bindings store has not answered for %.1f s, past the staleness "
                    "bound of %g s: every lookup is denied until it answers",
                    age,
                    self.max_staleness,
                )
            raise StoreUnavailable(
                f"the bindings store has not answered for {age:.1f} s, longer than the "
                f"staleness bound of {self.max_staleness:g} s: {self._last_error}"
            )
        raise StoreUnavailable(f"{self._last_error} (and nothing is cached for this lookup)")

    def _query(self, fn: Callable[[], T]) -> T:
        try:
            result = fn()
        except StoreUnavailable as exc:
            self._mark_down(exc)
            raise
        self._mark_up()
        return result

    def _observe(self, revision: int, *, authoritative: bool, generation: int) -> bool:
        """Adopt `revision`, dropping the cache if it moved; whether what was read at
        `revision` (with the store at `generation`) may be cached. Call with the lock held.

        Only the watcher may move the revision backwards (a restored database); a
        slow query that read an older snapshot must not undo a newer revision. A new
        generation (the SQLite file replaced) drops everything: the new file's
        revisions say nothing about the old one's.
        """
        now_generation = self.store.generation
        if now_generation != self._generation:
            self._generation = now_generation
            self._clear()
            self._revision = None
        if generation != now_generation:
            # Read while the file was being swapped: from either file. Answer, but
            # neither cache it nor trust its revision; the next poll settles it.
            return False
        known = self._revision
        if known is None or revision > known or (authoritative and revision != known):
            if known is not None:
                self._clear()
            self._revision = revision
        return revision == self._revision

    def _mark_down(self, exc: StoreError) -> None:
        """Lookups fail: logged once when the outage starts, not per call."""
        with self._state_lock:
            started = not self._down
            self._down = True
            self._last_error = exc.message
            if started:
                self._down_since = self._clock()
        if started:
            log.warning(
                "the bindings store is unavailable: %s; cached lookups are served for up to "
                "%g s after the last answer, the others are denied",
                exc.message,
                self.max_staleness,
            )

    def _mark_up(self) -> None:
        """A query or poll succeeded: confirmed now; logged once when an outage ends."""
        self._confirmed = self._clock()
        if not self._down:  # the hot path: no lock
            return
        with self._state_lock:
            ended = self._down
            self._down = False
            self._past_bound = False
            lasted = self._clock() - self._down_since
        if ended:
            log.info("the bindings store answers again, after %.1f s unavailable", lasted)

    def status(self) -> CacheStatus:
        """Where the cache stands, for health checks."""
        since = self._clock() - self._confirmed
        if not self._down:
            state = "fresh"
        else:
            state = "stale" if since <= self.max_staleness else "unavailable"
        return CacheStatus(
            state,
            self._revision,
            None if since == float("inf") else since,
            self._last_error,
            len(self._roles) + len(self._attrs),
            self.hits,
            self.misses,
            self.invalidations,
        )

    # ------------------------------------------------------------------ watcher

    def poll(self) -> None:
        """Read the revision once and adopt it (what the watcher does every interval)."""
        generation = self.store.generation
        try:
            revision = self.store.revision()
        except StoreUnavailable as exc:
            self._mark_down(exc)
            raise
        with self._lock:
            self._observe(revision, authoritative=True, generation=generation)
        self._mark_up()

    def _watch(self) -> None:
        try:
            self._watch_until_stopped()
        finally:
            # The thread may outlive close()'s join (a connect that hangs); whatever
            # listener it opened last is closed here, not left to the garbage collector.
            self._close_listener()

    def _watch_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                if self.listen and self._listener is None:
                    # LISTEN before reading the revision, so no change falls in between.
                    self._listener = self._open_listener()
                self.poll()
                if self._listener is not None:
                    # Wake on a notification, or after the interval to poll anyway.
                    for _ in self._listener.notifies(timeout=self.poll_interval, stop_after=1):
                        pass
                    continue
            except StoreError as exc:
                self._mark_down(exc)
                self._close_listener()
            except (psycopg.Error, OSError) as exc:
                self._mark_down(
                    StoreUnavailable(
                        f"cannot reach the database at {self.store.url}: {short_reason(str(exc))}"
                    )
                )
                self._close_listener()
            except Exception as exc:
                # Never let the watcher die: without it the cache would only go stale
                # (and deny) and never recover. Treat it as an outage and try again.
                log.exception("store watcher failed; retrying")
                self._mark_down(StoreUnavailable(f"store watcher failed: {exc}"))
                self._close_listener()
            self._stop.wait(self.poll_interval)

    def _open_listener(self) -> psycopg.Connection[Any]:
        engine = self.store.engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.setdefault("connect_timeout", max(1, round(self.store.connect_timeout)))
        try:
            conn = psycopg.connect(*args, **kwargs, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot reach the database at {self.store.url}: {short_reason(str(exc))}"
            ) from None
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            # Closing a connection that already broke may fail; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()
