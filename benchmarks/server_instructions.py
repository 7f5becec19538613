"""The server benchmarks' ratios again, in instructions: what this noisy box cannot move.

`server_load` and `audit_throughput` time real CPU, and on this shared 2-vCPU box the
same code has given check/echo anywhere from 1.23x to 1.77x across runs. Here each
server runs under `valgrind --tool=callgrind`, which counts the instructions the
process executes in user space (every thread), whatever else the machine is doing:
the same code and input give the same count to within a fraction of a percent. The
load is the same asyncio client with calls in flight; counters are zeroed after a
warm-up and read after a fixed number of calls, so start-up is not counted.

What instructions leave out: time in the kernel (a durable fsync, the socket calls,
context switches) and the cost of cache misses. They measure the Python and gRPC work
per call, which is where the check/echo gap is; `audit_throughput` has the rest.

    python -m benchmarks.server_instructions [--calls N] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.server_load import (
    RESULTS,
    ROOT,
    batch_bytes,
    check_bytes,
    load,
    stop,
    wait_loaded,
)
from benchmarks.timing import Outcome, write_section

HEADING = "## Server instructions per call (benchmarks/server_instructions.py)"
PDP = (
    "-m pdp.cli.main serve --listen 127.0.0.1:0 --policies policies "
    "--bindings-file examples/bindings.yaml --log-level warning"
).split()
CHECK = "/pdp.v1.DecisionService/Check"
EVALUATIONS = "/pdp.v1.DecisionService/Evaluations"
ECHO = "/bench.Echo/Echo"
WARM_UP = 300  # calls before the counters are zeroed (load() adds 201 of its own: counted)


@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]  # the server's command line after the interpreter
    method: str
    payload: bytes
    decisions: int  # per call


def scenarios(logs: Path) -> list[Scenario]:
    check, batch = check_bytes(), batch_bytes(one_resource=True)

    def pdp(*settings: str) -> tuple[str, ...]:
        return (*PDP, *(x for s in settings for x in ("--set", s)))

    return [
        Scenario("echo", ("-m", "benchmarks.server_echo"), ECHO, check, 0),
        Scenario(
            "echo + durable append",
            ("-m", "benchmarks.server_echo", "--append", str(logs / "echo")),
            ECHO,
            check,
            0,
        ),
        Scenario("check, audit off", pdp("audit.sink=none"), CHECK, check, 1),
        Scenario(
            "check, audit buffered",
            pdp(f"audit.path={logs / 'b' / 'audit.jsonl'}", "audit.mode=buffered"),
            CHECK,
            check,
            1,
        ),
        Scenario(
            "check, audit durable",
            pdp(f"audit.path={logs / 'd' / 'audit.jsonl'}", "audit.mode=durable"),
            CHECK,
            check,
            1,
        ),
        Scenario(
            "batch of 100, one document, audit off",
            pdp("audit.sink=none"),
            EVALUATIONS,
            batch,
            100,
        ),
    ]


def instructions(s: Scenario, calls: int, concurrency: int, out: Path) -> float:
    """Instructions per call of the server process running `s` (all its threads)."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/cg.%p",
        sys.executable,
        *s.args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        port = pid = 0
        deadline = time.monotonic() + 300
        while not port and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on [^ ]+:(\d+).*pid (\d+)", line)
            if m:
                port, pid = int(m.group(1)), int(m.group(2))
        if not port:
            raise RuntimeError(f"{s.name}: the server did not start under valgrind")
        target = f"127.0.0.1:{port}"
        if s.method != ECHO:
            wait_loaded(port, timeout=300)
        asyncio.run(load(target, s.method, s.payload, WARM_UP, concurrency))
        _control("-z", pid)
        asyncio.run(load(target, s.method, s.payload, calls, concurrency))
        _control("-d", pid)
        dump = max(out.glob(f"cg.{pid}.*"), key=lambda p: p.stat().st_mtime)
        total = _totals(dump)
    finally:
        stop(proc, wait=120)
    return total / (calls + 1 + min(200, calls))  # load() warms up with 1 + 200 calls


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def _totals(dump: Path) -> int:
    m = re.search(r"^(?:totals|summary): (\d+)", dump.read_text(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(m.group(1))


def report(per_call: dict[str, float], calls: int, concurrency: int) -> tuple[str, list[str]]:
    echo, off = per_call["echo"], per_call["check, audit off"]
    rows = "\n".join(
        f"| {name} | {n / 1000:,.0f} | {n / echo:.2f}× |" for name, n in per_call.items()
    )
    batch = per_call["batch of 100, one document, audit off"] / 100
    headline = [
        f"check/echo in instructions: {off / echo:.2f}× (goal ≤ 1.25×)",
        f"buffered +{per_call['check, audit buffered'] / off - 1:.0%}, "
        f"durable +{per_call['check, audit durable'] / off - 1:.0%} instructions per check",
    ]
    text = f"""{HEADING}

`python -m benchmarks.server_instructions` (about 4 minutes). Each server process runs
under `valgrind --tool=callgrind`; {calls:,} calls with {concurrency} in flight after a
warm-up, counted in every thread of the server, user space only (no kernel time, no
cache misses). Repeatable to within about 1% whatever else the box does, so this is
where a change to the per-call work shows; `server_load` and `audit_throughput` time
the same calls on real CPUs. Same request as `server_load`.

| server, call | thousand instructions per call | vs echo |
| --- | ---: | ---: |
{rows}

- check/echo: **{off / echo:.2f}×** in instructions (goal ≤ 1.25× of server CPU: at this
  echo a check may do {0.25 * echo / 1000:,.0f} thousand instructions more than it; it does
  {(off - echo) / 1000:,.0f} thousand more)
- the batch of 100 on one document: {batch / 1000:,.1f} thousand instructions per
  decision, {off / batch:.1f}× fewer than a single check's
- the audit log per check: buffered **+{per_call["check, audit buffered"] / off - 1:.0%}**,
  durable **+{per_call["check, audit durable"] / off - 1:.0%}** (the record is built and sealed
  in both; durable's fsync and wake-ups are kernel time, not counted here); the durable
  append alone costs the echo server +{per_call["echo + durable append"] / echo - 1:.0%}
"""
    return text, headline


def main(argv: Sequence[str] | None = None) -> Outcome:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="counted calls per server")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("server_instructions: valgrind is not installed; nothing measured")
        return Outcome(False, ("valgrind is not installed (Debian: apt install valgrind)",))
    per_call: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pdp-cg-") as tmp:
        for s in scenarios(Path(tmp)):
            per_call[s.name] = instructions(s, args.calls, args.concurrency, Path(tmp))
            print(f"{s.name}: {per_call[s.name] / 1000:,.0f} thousand instructions per call")
    text, headline = report(per_call, args.calls, args.concurrency)
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)
    return Outcome(True, tuple(headline))


if __name__ == "__main__":
    raise SystemExit(0 if main().ok else 1)
