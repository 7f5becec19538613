"""What the audit log costs the server: single checks with audit off, buffered, durable.

Three `pdp serve` processes on the example policies and bindings, identical but for
`audit.sink`/`audit.mode` (off; JSONL buffered; JSONL durable), each writing its own
log in a temporary directory. The load generator is `benchmarks.server_load`'s: an
asyncio client process with a fixed number of calls in flight. Rounds are
interleaved, so all three see the same machine noise; ratios are taken within a
round, then the median. After the run every log is checked: it must hold exactly one
record per answered call (warm-up included) and verify.

Goals (issue 5): `buffered` costs under 10% of throughput, `durable` under 25%.

    python -m benchmarks.audit_throughput [--calls N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.server_load import (
    Result,
    check_bytes,
    measure,
    median_round,
    start_pdp,
    stop,
)
from benchmarks.timing import Outcome, write_section
from pdp.audit.query import Filter
from pdp.audit.read import JsonlSource
from pdp.audit.verify import verify
from pdp.v1 import decision_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## Audit log cost (benchmarks/audit_throughput.py)"
MODES = {
    "audit off": "audit.sink=none",
    "buffered": "audit.mode=buffered",
    "durable": "audit.mode=durable",
}


def serve(mode: str, log: Path, threads: int) -> tuple[object, int, int]:
    return start_pdp(threads, f"audit.path={log}", MODES[mode])


def run(
    calls: int, concurrency: int, rounds: int, threads: int, logs: Path
) -> tuple[dict[str, list[Result]], dict[str, int]]:
    payload = check_bytes()
    servers = {}
    answered = dict.fromkeys(MODES, 0)
    results: dict[str, list[Result]] = {}
    try:
        for mode in MODES:
            servers[mode] = serve(mode, logs / mode.replace(" ", "-"), threads)
        for i in range(rounds):
            order = list(MODES)[i % 3 :] + list(MODES)[: i % 3]  # rotate who goes first
            for mode in order:
                _, port, pid = servers[mode]
                r, last = measure(
                    mode,
                    f"127.0.0.1:{port}",
                    pid,
                    "/pdp.v1.DecisionService/Check",
                    payload,
                    calls,
                    concurrency,
                    1,
                )
                resp = pb.CheckResponse.FromString(last)
                assert len(resp.decisions) == 1 and resp.decisions[0].decision, resp
                answered[mode] += calls + 1 + min(200, calls)  # `measure` warms up too
                results.setdefault(mode, []).append(r)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)  # type: ignore[arg-type]
    return results, answered


def sync_latency(directory: Path, n: int = 300) -> tuple[float, float]:
    """Median and p99 (ms) of one 1 KB `O_DSYNC` append: the floor under a durable call."""
    path = directory / "sync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC, 0o600)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 1023 + b"\n")
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times) * 1000, times[int(0.99 * n)] * 1000


def check_logs(logs: Path, answered: dict[str, int]) -> list[str]:
    """Problems: a log that misses records or does not verify."""
    problems = []
    for mode in ("buffered", "durable"):
        log = logs / mode
        found = JsonlSource(log).stats(Filter()).total
        if found != answered[mode]:
            problems.append(f"{mode}: {found} records for {answered[mode]} answered calls")
        if not verify(JsonlSource(log)).ok:
            problems.append(f"{mode}: the chain does not verify")
    if (logs / "audit-off").exists():
        problems.append("audit off: a log was written")
    return problems


def ratio(num: list[Result], den: list[Result]) -> float:
    return statistics.median(a.calls_per_s / b.calls_per_s for a, b in zip(num, den, strict=True))


def cpu_ratio(num: list[Result], den: list[Result]) -> float:
    return statistics.median(
        a.cpu_us_per_call / b.cpu_us_per_call for a, b in zip(num, den, strict=True)
    )


WHERE = """\
Where the cost goes. Everything the server does in Python runs under one GIL, so its
throughput follows the CPU it spends per call, and the audit log adds to that:

- **Sealing a record** (building it from the draft, its canonical JSON line and hash):
  about 14 µs per record in a loop, about 40 µs per call inside the loaded server
  (sampled with `py-spy --gil`: time holding the GIL). The call thread only queues a
  `RecordDraft` (~2 µs in a loop); `buffered` seals on the writer thread, `durable` on
  the thread that leads the group commit. This is most of what `buffered` costs.
- **Waiting for the group commit** (`durable`): every call blocks on its ticket and
  wakes when its batch is stored. Voluntary context switches per call (all threads,
  `/proc/<pid>/task/*/status`, 8 in flight): 14 with the audit log off, 16–17
  `buffered`, 27 `durable`; each wake-up also takes the GIL back from 15 other threads.
  Time holding the GIL per call was about 310 µs off and 500 µs durable: `_record`
  about 110 µs of the difference (sealing 41, the sink write 17, queueing and the
  ticket the rest), and the rest spread over gRPC's own code, which runs slower between
  more switches.
- **The disk** is not the bottleneck: a 1 KB `O_DSYNC` append costs about 30 µs of
  kernel CPU here (wall time as above), and batches grow with the calls in flight.

The ratios move by ±7 points between runs on this shared box: in 2026-11-27's runs
`buffered` kept 89–91% (8 in flight) and 77–84% (32), `durable` 67–69% and 69–71%.
"""


def report(
    by_c: dict[int, dict[str, list[Result]]],
    rounds: int,
    threads: int,
    problems: list[str],
    sync: tuple[float, float],
) -> tuple[str, dict[int, tuple[float, float]]]:
    lines = [
        HEADING,
        "",
        "Single checks (`Check`, one action) against three `pdp serve` processes that differ "
        "only in the audit log: off, JSONL `buffered`, JSONL `durable` (fsync per batch). "
        f"Loopback, {os.cpu_count()} CPUs shared by the servers and the load generator, "
        f"{threads} server threads, {rounds} interleaved rounds per concurrency; the table "
        "shows each mode's median round, the ratios are medians of per-round ratios. "
        "After the run each log held exactly one record per answered call and verified"
        + (" — EXCEPT: " + "; ".join(problems) if problems else "")
        + f". One 1 KB synchronous append (`O_DSYNC`) on this disk took {sync[0]:.2f} ms "
        f"(median; p99 {sync[1]:.2f} ms): a durable call waits for about one to two of "
        f"those. Measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| calls in flight | audit | calls/s | p50 ms | p99 ms | server CPU µs/call |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    ratios: dict[int, tuple[float, float]] = {}
    for c, results in by_c.items():
        for mode, rs in results.items():
            r = median_round(rs)
            lines.append(
                f"| {c} | {mode} | {r.calls_per_s:,.0f} | {r.pct(0.5):.2f} | "
                f"{r.pct(0.99):.2f} | {r.cpu_us_per_call:,.0f} |"
            )
        off = results["audit off"]
        ratios[c] = (ratio(results["buffered"], off), ratio(results["durable"], off))
    lines.append("")
    for c, (buf, dur) in ratios.items():
        off = by_c[c]["audit off"]
        lines.append(
            f"- {c} in flight: buffered keeps **{buf:.0%}** of the throughput "
            f"(costs {1 - buf:.0%}; goal < 10%: {'met' if buf > 0.9 else 'not met'}), "
            f"durable **{dur:.0%}** (costs {1 - dur:.0%}; goal < 25%: "
            f"{'met' if dur > 0.75 else 'not met'}); server CPU per call "
            f"×{cpu_ratio(by_c[c]['buffered'], off):.2f} buffered, "
            f"×{cpu_ratio(by_c[c]['durable'], off):.2f} durable"
        )
    lines += ["", WHERE]
    return "\n".join(lines) + "\n", ratios


def main(argv: list[str] | None = None) -> Outcome:
    parser = argparse.ArgumentParser(description="audit log throughput cost")
    parser.add_argument("--calls", type=int, default=4000, help="calls per round and mode")
    parser.add_argument("--concurrency", default="8,32", help="calls in flight, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=16, help="server threads")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv if argv is not None else [])
    by_c: dict[int, dict[str, list[Result]]] = {}
    problems: list[str] = []
    sync = (0.0, 0.0)
    for c in (int(x) for x in args.concurrency.split(",")):
        with tempfile.TemporaryDirectory(prefix="pdp-audit-bench-") as tmp:
            sync = sync_latency(Path(tmp))
            results, answered = run(args.calls, c, args.rounds, args.threads, Path(tmp))
            problems += [f"{c} in flight, {p}" for p in check_logs(Path(tmp), answered)]
        by_c[c] = results
    text, ratios = report(by_c, args.rounds, args.threads, problems, sync)
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)
    met = all(b > 0.9 and d > 0.75 for b, d in ratios.values())
    return Outcome(
        not problems,
        tuple(
            f"{c} in flight: buffered {b:.0%}, durable {d:.0%} of audit-off throughput "
            "(goals > 90%, > 75%)"
            for c, (b, d) in ratios.items()
        )
        + (("goals met" if met else "goals NOT met"),)
        + tuple(problems),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
