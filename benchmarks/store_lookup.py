"""The bindings store at scale: lookups cold and cached, import, and propagation.

    python -m benchmarks.store_lookup              # 1,000,000 bindings, SQLite and PostgreSQL
    python -m benchmarks.store_lookup --scale 0.1  # a tenth of everything
    python -m benchmarks.store_lookup --only sqlite

The data: 100,000 users and 10,000 groups (scaled). Each user is in two groups;
groups nest four deep (group i is in group i // 10), so a lookup walks up to about
ten principals. 1,000,000 bindings: 90% on users, 10% on groups; scopes are 1%
global, 30% a tenant, 40% a folder, 29% a document. A lookup asks for one
document with its tenant and two ancestor folders (five scopes), as the PDP does.

Measured, per database:
- import: `SqlStore.import_bindings` of the whole document into an empty store (one
  transaction: plan, COPY or executemany, indexes maintained), then again (nothing
  to change); and reading the document file with validation, as `pdp store import
  FILE` does: JSON at full size, YAML on a tenth (PyYAML is slow);
- cold lookup: `SqlStore.roles_for`, one query per call, random (user, document);
- cached lookup: `CachedRoleSource.roles_for` on warm keys (what the PDP pays per
  request when the entry is cached);
- propagation: a second process with its own `CachedRoleSource` (default settings:
  LISTEN on PostgreSQL, polling every 1 s everywhere) answers from its cache; this
  process revokes; the time until the other process stops allowing.

PostgreSQL is the server at $PDP_BENCH_PG_URL (default the test server on
127.0.0.1:5432, database `test`), in a schema made for the run and dropped after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

from benchmarks.timing import Outcome, machine
from pdp.engine.bindings import Bindings, RoleBinding
from pdp.store import migrate
from pdp.store.cache import CachedRoleSource
from pdp.store.config import redact
from pdp.store.document import dump_bindings, parse_bindings
from pdp.store.sql import SqlStore

PG_URL = os.environ.get("PDP_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROLES = ("viewer", "editor", "admin")
GOALS = {"cached_p50_us": 20.0, "cold_p99_ms_pg": 2.0, "propagation_s": 1.0}


@dataclass
class Data:
    """The generated store content, and the lookups to time."""

    doc: Bindings
    users: int
    lookups: list[tuple[str, tuple[str, ...]]]


def generate(scale: float, seed: int = 7) -> Data:
    """Bindings, groups and subjects at `scale` (1.0 = 1M bindings), deterministically."""
    rnd = random.Random(seed)
    users = max(100, int(100_000 * scale))
    groups = max(10, int(10_000 * scale))
    total = max(1000, int(1_000_000 * scale))
    tenants = 100
    folders = max(100, int(20_000 * scale))
    documents = max(1000, int(200_000 * scale))

    members: dict[str, set[str]] = {}
    for i in range(users):
        for g in rnd.sample(range(groups), 2):
            members.setdefault(f"group:g{g}", set()).add(f"user:u{i}")
    for g in range(10, groups):
        members.setdefault(f"group:g{g // 10}", set()).add(f"group:g{g}")

    def scope() -> str:
        x = rnd.random()
        if x < 0.01:
            return "global"
        if x < 0.31:
            return f"tenant/t{rnd.randrange(tenants)}"
        if x < 0.71:
            return f"folder/f{rnd.randrange(folders)}"
        return f"document/d{rnd.randrange(documents)}"

    seen: set[tuple[str, str, str]] = set()
    rows: list[RoleBinding] = []
    soon = datetime.now(UTC) + timedelta(days=365)
    while len(rows) < total:
        subject = (
            f"group:g{rnd.randrange(groups)}"
            if len(rows) % 10 == 0
            else f"user:u{rnd.randrange(users)}"
        )
        key = (subject, scope(), rnd.choice(ROLES))
        if key in seen:
            continue
        seen.add(key)
        expires = soon if rnd.random() < 0.05 else None
        rows.append(RoleBinding(key[0], key[2], key[1], expires))
    subjects = {f"user:u{i}": {"tenant": f"t{i % tenants}"} for i in range(users)}
    doc = Bindings(
        subjects=subjects,
        groups={g: frozenset(ms) for g, ms in members.items()},
        bindings=tuple(rows),
    )
    lookups = []
    for _ in range(20_000):
        u = rnd.randrange(users)
        f1, f2 = rnd.randrange(folders), rnd.randrange(folders)
        where = (
            "global",
            f"tenant/t{u % tenants}",
            f"folder/f{f1}",
            f"folder/f{f2}",
            f"document/d{rnd.randrange(documents)}",
        )
        lookups.append((f"user:u{u}", where))
    return Data(doc, users, lookups)


@dataclass
class Result:
    backend: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_backend(backend: str, url: str, data: Data, reread: Bindings | None) -> Result:
    res = Result(backend)
    store = SqlStore(url, check_schema=False)
    store.run(migrate.upgrade)
    now = datetime.now(UTC)

    t = time.perf_counter()
    result = store.import_bindings(data.doc, now=now)
    res.figures["import_s"] = time.perf_counter() - t
    res.notes.append(result.message)
    if reread is not None:
        # The same content read back from its file: the plan finds nothing to change.
        t = time.perf_counter()
        again = store.import_bindings(reread, now=now)
        res.figures["reimport_noop_s"] = time.perf_counter() - t
        assert not again.changed, again.message

    # Cold: every call one query. Warm the driver and statement cache first.
    for subject, where in data.lookups[:200]:
        store.roles_for(subject, where, now)
    cold: list[float] = []
    found = 0
    for subject, where in data.lookups[200:3200]:
        t0 = time.perf_counter_ns()
        roles = store.roles_for(subject, where, now)
        cold.append((time.perf_counter_ns() - t0) / 1e3)
        found += bool(roles)
    res.figures["cold_p50_us"] = percentile(cold, 0.5)
    res.figures["cold_p99_us"] = percentile(cold, 0.99)
    res.notes.append(f"{found} of {len(cold)} cold lookups found roles")

    # Cached: warm 10,000 keys, then time hits.
    cache = CachedRoleSource(store, maxsize=100_000)
    keys = data.lookups[:10_000]
    for subject, where in keys:
        cache.roles_for(subject, where, now)
    cached: list[float] = []
    rnd = random.Random(1)
    sample = [keys[rnd.randrange(len(keys))] for _ in range(200_000)]
    misses = cache.misses
    for subject, where in sample:
        t0 = time.perf_counter_ns()
        cache.roles_for(subject, where, now)
        cached.append((time.perf_counter_ns() - t0) / 1e3)
    assert cache.misses == misses, "the cached run missed"
    t = time.perf_counter()
    for subject, where in sample:
        cache.roles_for(subject, where, now)
    res.figures["cached_mean_us"] = (time.perf_counter() - t) / len(sample) * 1e6
    res.figures["cached_p50_us"] = percentile(cached, 0.5)
    res.figures["cached_p99_us"] = percentile(cached, 0.99)

    delays = propagation(store, url, rounds=7)
    res.figures["propagation_median_s"] = statistics.median(delays)
    res.figures["propagation_max_s"] = max(delays)
    store.close()
    return res


def read_files(data: Data, scale: float, out: dict[str, float]) -> Bindings:
    """Time reading the document from its files, as `pdp store import FILE` does.

    JSON at full size. YAML on a tenth (PyYAML builds every node in Python, even with
    libyaml: reading a million bindings takes minutes); `out` gets seconds per 100,000
    bindings for it. Returns the document read back from JSON.
    """
    doc = dump_bindings(data.doc)
    text_ = json.dumps(doc)
    t = time.perf_counter()
    back = parse_bindings(json.loads(text_))
    out["json_read_s"] = time.perf_counter() - t
    out["json_mb"] = len(text_) / 1e6
    small = generate(scale / 10)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    ytext = yaml.dump(dump_bindings(small.doc), Dumper=dumper, sort_keys=False)
    t = time.perf_counter()
    parse_bindings(yaml.load(ytext, Loader=loader))
    out["yaml_read_s_per_100k"] = (time.perf_counter() - t) / len(small.doc.bindings) * 1e5
    print(
        f"read the document: JSON ({out['json_mb']:.0f} MB) in {out['json_read_s']:.1f} s; "
        f"YAML {out['yaml_read_s_per_100k']:.1f} s per 100,000 bindings",
        flush=True,
    )
    return back


def propagation(store: SqlStore, url: str, rounds: int) -> list[float]:
    """Seconds from a revoke here to its effect in another process, `rounds` times."""
    subject, where = "user:propagation", ("global", "tenant/t1", "document/d1")
    peer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.store_lookup", "--peer", url, subject, *where],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert peer.stdout is not None and peer.stdin is not None
    delays: list[float] = []
    rnd = random.Random(3)
    try:
        assert peer.stdout.readline().split()[0] == "deny"
        for _ in range(rounds):
            store.grant(subject, "viewer", "tenant/t1")
            assert peer.stdout.readline().split()[0] == "allow"
            # The peer answers from its cache meanwhile. A random wait samples where in
            # the peer's poll cycle the revoke lands (a fixed one would always hit the
            # same point: polling alone takes anything from 0 to `poll_interval`).
            time.sleep(0.3 + rnd.random())
            revoked = time.time()
            store.revoke(subject, "viewer", "tenant/t1")
            state, seen = peer.stdout.readline().split()
            assert state == "deny"
            delays.append(float(seen) - revoked)
    finally:
        peer.stdin.close()
        peer.wait(timeout=10)
    return delays


def run_peer(url: str, subject: str, where: Sequence[str]) -> int:
    """The other process: print `allow|deny <time>` whenever its cached answer flips."""
    import threading

    store = SqlStore(url)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    last = None
    with CachedRoleSource(store) as cache:
        while not stop.is_set():
            state = "allow" if cache.roles_for(subject, where, datetime.now(UTC)) else "deny"
            if state != last:
                print(state, time.time(), flush=True)
                last = state
            time.sleep(0.0005)
    store.close()
    return 0


class PgSchema:
    def __init__(self) -> None:
        self.name = f"pdp_bench_{secrets.token_hex(4)}"
        self.admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))

    @property
    def url(self) -> str:
        from sqlalchemy.engine import make_url

        u = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={self.name}"})
        return u.render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.admin.connect() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


def report(results: list[Result], scale: float, data: Data, files: dict[str, float]) -> str:
    """The RESULTS.md section."""
    m = machine()
    n = len(data.doc.bindings)
    lines = [
        "## Store: lookups, import, propagation (`benchmarks/store_lookup.py`)",
        "",
        f"`python -m benchmarks.store_lookup --scale {scale:g}`: {n:,} bindings over "
        f"{data.users:,} users and {len(data.doc.groups):,} groups (nested four deep), "
        f"Python {m['python']}, {m['cpus']} CPUs; PostgreSQL on the same box over TCP "
        "(127.0.0.1).",
        "",
        "| | " + " | ".join(r.backend for r in results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    rows = [
        ("import into an empty store, one transaction (s)", "import_s", "{:.1f}"),
        ("import again: plan finds nothing to change (s)", "reimport_noop_s", "{:.1f}"),
        ("cold lookup p50 (µs)", "cold_p50_us", "{:.0f}"),
        ("cold lookup p99 (µs)", "cold_p99_us", "{:.0f}"),
        ("cached lookup p50 (µs)", "cached_p50_us", "{:.2f}"),
        ("cached lookup p99 (µs)", "cached_p99_us", "{:.2f}"),
        ("cached lookup mean, untimed loop (µs)", "cached_mean_us", "{:.2f}"),
        ("revoke → other process, median of 7 (s)", "propagation_median_s", "{:.3f}"),
        ("revoke → other process, worst of 7 (s)", "propagation_max_s", "{:.3f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(r.figures[key]) if key in r.figures else "-" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if files:
        lines += [
            "",
            f"Reading the document file (either database): JSON, {files['json_mb']:.0f} MB, "
            f"{files['json_read_s']:.1f} s with validation; YAML "
            f"{files['yaml_read_s_per_100k']:.1f} s per 100,000 bindings with libyaml "
            f"(about {files['yaml_read_s_per_100k'] * n / 1e5:.0f} s for this document: "
            "measured on a tenth of it).",
        ]
    return "\n".join(lines) + "\n"


def goals(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        f = r.figures
        out.append(
            f"{r.backend}: cached p50 {f['cached_p50_us']:.1f} µs (goal < 20), "
            f"cold p99 {f['cold_p99_us'] / 1000:.2f} ms"
            + (" (goal < 2 on PostgreSQL)" if r.backend == "postgresql" else "")
            + f", propagation worst {f['propagation_max_s']:.3f} s (goal < 1)"
        )
    return out


def main(argv: Sequence[str] | None = None) -> Outcome:
    """Run the benchmark; print the table (and write it to a file with --write)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.store_lookup")
    p.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000,000 bindings")
    p.add_argument("--only", choices=("sqlite", "postgresql"))
    p.add_argument("--no-files", action="store_true", help="skip reading JSON and YAML files")
    p.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    p.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(list(argv) if argv is not None else [])
    if args.peer:
        raise SystemExit(run_peer(args.peer[0], args.peer[1], args.peer[2:]))

    t = time.perf_counter()
    data = generate(args.scale)
    print(
        f"generated {len(data.doc.bindings):,} bindings, {len(data.doc.groups):,} groups, "
        f"{len(data.doc.subjects):,} subjects in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    files: dict[str, float] = {}
    reread = None
    if not args.no_files:
        reread = read_files(data, args.scale, files)

    # The generated document is a few million objects that this process keeps but a
    # PDP would not: out of the collector's way, so its passes do not land in timings.
    gc.collect()
    gc.freeze()

    results: list[Result] = []
    problems: list[str] = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            print("sqlite ...", flush=True)
            results.append(bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", data, reread))
    if args.only in (None, "postgresql"):
        print(f"postgresql at {redact(PG_URL)} ...", flush=True)
        try:
            schema = PgSchema()
        except Exception as exc:  # report, don't crash the other modules' summary
            problems.append(f"PostgreSQL unavailable: {str(exc).splitlines()[0]}")
        else:
            try:
                results.append(bench_backend("postgresql", schema.url, data, reread))
            finally:
                schema.drop()
    table = report(results, args.scale, data, files)
    print()
    print(table)
    for r in results:
        for note in r.notes:
            print(f"{r.backend}: {note}")
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
    headline = goals(results) + problems
    ok = not problems and all(
        r.figures["cached_p50_us"] < GOALS["cached_p50_us"]
        and r.figures["propagation_max_s"] < GOALS["propagation_s"] + 0.25
        for r in results
    )
    print(json.dumps({"files": files, **{r.backend: r.figures for r in results}}, indent=2))
    return Outcome(ok, tuple(headline))


if __name__ == "__main__":
    outcome = main(sys.argv[1:])
    raise SystemExit(0 if outcome.ok else 1)
