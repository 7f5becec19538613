"""Load on the real gRPC server: single checks, batches of 100, and an echo floor.

The PDP (`pdp serve` on the example policies and bindings) and a bare echo server
built the same way (`benchmarks.server_echo`) run as their own processes on
loopback; this process is the load generator: asyncio gRPC clients with a fixed
number of calls in flight and a bounded number of calls. For each scenario:
calls/s, decisions/s, p50/p99 latency, and the server's CPU time per call, read
from /proc/<pid>/stat before and after (so the client's own CPU is not counted).

Goals (issue 4): a check costs at most 1.25x the echo call's server CPU, and a batch
of 100 evaluations gives at least 20x the single check's decisions per second.

    python -m benchmarks.server_load [--calls N] [--concurrency C] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from benchmarks.timing import Outcome, write_section
from pdp.client import check_request, evaluations_request
from pdp.v1 import decision_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## gRPC server (benchmarks/server_load.py)"
TICKS = os.sysconf("SC_CLK_TCK")

SUBJECT = {"type": "user", "id": "bob"}
DOCUMENT = {
    "type": "document",
    "id": "42",
    "properties": {"tenant": "acme", "owner": "frank", "public": False},
    "ancestors": ["folder/7", "folder/1"],
}
ACTIONS = ("read", "update", "delete", "share")


def check_bytes() -> bytes:
    return check_request(SUBJECT, ["read"], DOCUMENT, {"ip": "10.1.2.3"}).SerializeToString()


def batch_bytes(n: int = 100, *, one_resource: bool) -> bytes:
    """100 evaluations of one subject: on one document (actions vary), or each on its
    own document (a list being filtered), the case that shares nothing."""
    if one_resource:
        evals: list[dict[str, object]] = [{"action": ACTIONS[i % len(ACTIONS)]} for i in range(n)]
        req = evaluations_request(
            evals, subject=SUBJECT, resource=DOCUMENT, context={"ip": "10.1.2.3"}
        )
    else:
        evals = [
            {"action": ACTIONS[i % len(ACTIONS)], "resource": {**DOCUMENT, "id": str(100 + i)}}
            for i in range(n)
        ]
        req = evaluations_request(evals, subject=SUBJECT, context={"ip": "10.1.2.3"})
    return req.SerializeToString()


@dataclass
class Result:
    name: str
    calls: int
    decisions_per_call: int
    seconds: float
    latencies: list[float]
    server_cpu: float  # seconds of server CPU (user + system) over the run

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def decisions_per_s(self) -> float:
        return self.calls * self.decisions_per_call / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    @property
    def cpu_us_per_call(self) -> float:
        return self.server_cpu / self.calls * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` (Linux /proc), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start(args: list[str]) -> tuple[subprocess.Popen[str], int, int]:
    """Start a server process; wait for its `listening on HOST:PORT, pid N` line."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on [^ ]+:(\d+).*pid (\d+)", line)
        if m:
            return proc, int(m.group(1)), int(m.group(2))
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(args)}")


def start_pdp(threads: int, *settings: str) -> tuple[subprocess.Popen[str], int, int]:
    """`pdp serve` on the example policies and bindings, with `--set` `settings`,
    once its policies are loaded."""
    args = [
        "-m",
        "pdp.cli.main",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        "policies",
        "--bindings-file",
        "examples/bindings.yaml",
        "--log-level",
        "warning",
    ]
    for s in (f"threads={threads}", *settings):
        args += ["--set", s]
    proc, port, pid = start(args)
    wait_loaded(port)
    return proc, port, pid


def wait_loaded(port: int, timeout: float = 30) -> None:
    """Until the PDP on `port` serves a policy version."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        info = ch.unary_unary(
            "/pdp.v1.DecisionService/ServerInfo",
            request_serializer=pb.ServerInfoRequest.SerializeToString,
            response_deserializer=pb.ServerInfoResponse.FromString,
        )
        while not info(pb.ServerInfoRequest(), timeout=timeout).policy_version:
            if time.monotonic() > deadline:
                raise RuntimeError("the PDP did not load its policies")
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str], wait: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def load(
    target: str, method: str, payload: bytes, calls: int, concurrency: int
) -> tuple[float, list[float], bytes]:
    """Send `payload` `calls` times with `concurrency` in flight; (seconds, latencies, last)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        last = await call(payload, timeout=10)  # connect and warm up
        for _ in range(min(200, calls)):
            await call(payload, timeout=10)
        latencies: list[float] = []
        remaining = calls

        async def worker() -> None:
            nonlocal remaining, last
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                last = await call(payload, timeout=10)
                latencies.append(time.perf_counter() - t0)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t, latencies, last


def measure(
    name: str,
    target: str,
    pid: int,
    method: str,
    payload: bytes,
    calls: int,
    concurrency: int,
    per_call: int,
) -> tuple[Result, bytes]:
    cpu0 = cpu_seconds(pid)
    seconds, latencies, last = asyncio.run(load(target, method, payload, calls, concurrency))
    cpu = cpu_seconds(pid) - cpu0
    # The warm-up calls are in the CPU figure too; count them (their latency is not kept).
    warm = 1 + min(200, calls)
    result = Result(name, calls, per_call, seconds, latencies, cpu * calls / (calls + warm))
    return result, last


def run(calls: int, concurrency: int, rounds: int, threads: int) -> dict[str, list[Result]]:
    check = check_bytes()
    batches = {
        "batch of 100, one document": batch_bytes(one_resource=True),
        "batch of 100, 100 documents": batch_bytes(one_resource=False),
    }
    # The server alone; what the audit log costs is benchmarks/audit_throughput.py.
    pdp, pdp_port, pdp_pid = start_pdp(threads, "audit.sink=none")
    echo, echo_port, echo_pid = start(["-m", "benchmarks.server_echo", "--threads", str(threads)])
    results: dict[str, list[Result]] = {}
    try:
        pdp_target, echo_target = f"127.0.0.1:{pdp_port}", f"127.0.0.1:{echo_port}"
        batch_calls = max(20, calls // 20)
        for _ in range(rounds):
            # Interleaved rounds: all three see the same machine noise.
            r, _ = measure(
                "echo", echo_target, echo_pid, "/bench.Echo/Echo", check, calls, concurrency, 0
            )
            results.setdefault("echo", []).append(r)
            r, last = measure(
                "check",
                pdp_target,
                pdp_pid,
                "/pdp.v1.DecisionService/Check",
                check,
                calls,
                concurrency,
                1,
            )
            resp = pb.CheckResponse.FromString(last)
            assert len(resp.decisions) == 1 and resp.decisions[0].decision, resp
            results.setdefault("check", []).append(r)
            for name, batch in batches.items():
                r, last = measure(
                    name,
                    pdp_target,
                    pdp_pid,
                    "/pdp.v1.DecisionService/Evaluations",
                    batch,
                    batch_calls,
                    concurrency,
                    100,
                )
                bresp = pb.EvaluationsResponse.FromString(last)
                assert len(bresp.decisions) == 100, len(bresp.decisions)
                assert not any(d.diagnostics for d in bresp.decisions), bresp.decisions[0]
                results.setdefault(name, []).append(r)
    finally:
        stop(pdp)
        stop(echo)
    return results


NOTES = """\
Runs on this box differ more than the code does: compare ratios within one run. With
the server on `grpc.aio` check/echo measured 1.23× (twice), 1.26×, 1.31× (twice),
1.32× (twice), 1.47× and 1.52× in nine runs on 2026-11-27; the thread-pool server it
replaced measured 1.68×–2.11× on the same day. The batch on one document gave
21.9×–30.1× (17.8×–25.7× with the thread pool). Later that day, with the same code,
the box ran the echo call far cheaper (207–274 µs of server CPU, against 426 µs in the
morning) while a check cost 374–440 µs: check/echo 1.56×, 1.69× and 1.77× in three
runs. The ratio moves with the echo's cost more than with ours: at a 250 µs echo,
1.25× leaves a check 60 µs above it, and the handler alone takes 122 µs of its
thread's CPU inside the server (`time.thread_time_ns()` around it; 56 µs in a loop
in-process). Counted in instructions, which this box's noise does not move
(`benchmarks/server_instructions.py`, below), check/echo is 1.52×–1.58×: the timed
runs at 1.23×–1.32× were the noise's luck.

### Why the server answers on the event loop (measured 2026-11-27)

The thread-pool server (`grpc.server`, 16 threads) handed every call from gRPC's poller
thread to a pool thread and back. Per thread (`/proc/<pid>/task/*/stat`, 8 in flight):
the echo server's poller spent 75–104 µs per call and its pool threads 110–130 µs; the
PDP's poller 115–138 µs and its pool threads 300–340 µs. The Check handler, timed with
`time.thread_time_ns()` inside that server, cost 152 µs per call against 45 µs in a loop
in-process, and 88 µs when called a second time straight after: the machine (the load
generator on the other vCPU) slows everything about 2×, and running cold between
hand-offs about 1.7× more.

On `grpc.aio` the decision calls run on the loop's thread, with no hand-off. Measured
side by side in one run (2 rounds, medians; the same handler in a prototype aio server
against `pdp serve` on the thread pool): the echo call cost 353 µs of server CPU on the
thread pool and 426 µs on aio (aio's own per-call machinery is dearer), but the check
went from 622 to 553 µs, and from 1,670 to 2,043 calls/s. A 6-round run of the same
pair gave check/echo 1.51×–1.73× on the thread pool and 1.08×–1.37× on aio. (An
aio trial in an earlier session measured 1.46×–1.77×; today's runs did not reproduce
that.) What needs I/O still runs on the pool: see docs/server.md, "Where calls run".

### Why a check costs about 1.5× an echo call

The handler is 45–60 µs of Python in a loop (the box's speed moved during the day):
parsing and converting the request about 13, the engine with the role lookup 10–17
(fresh request objects cost more than repeated ones: string hashes), the answer with
its decision id about 9, the rest spread over some 40 functions. Counted with
`valgrind --tool=callgrind`: about 233,000 instructions per check, a fifth of them in
the interpreter loop itself, and no single function stands out. (It was 246,000 before
the decisions were added to the response in place instead of copied in, attribute
sizes were skipped for requests too small to exceed the limit, and decision ids were
formatted from their parts: 5.6% less, within this box's run-to-run noise here.)
Inside the loaded server it costs two to three times the loop figure, like gRPC's
own Python. For 1.25× the handler would need half its instructions, and reading the
request's fields out of protobuf alone takes most of that budget (see "What 1.25×
leaves for a check" below).

Tried and not adopted: **mypyc** on the engine, the converter and `pdp.evaluation`
(in-process check 46–49 → 35–43 µs, 10–20%; a C build step in every set-up for less
than the run-to-run noise); **fewer calls in flight** (1 in flight 1.95×, 4 in flight
2.09×, thread-pool server); **2 to 16 pool threads** (no trend). A decision cache keyed
on the request would make this benchmark's repeated request nearly free, and would
measure the cache, not the service: not done.

The batch goal is met because a batch pays the per-call costs once: on one document a
batch of 100 cost about 2,000–2,600 µs of server CPU, 20–26 µs per decision against
550–690 µs for a check. On 100 documents (nothing shared but the subject) it is
45–55 µs per decision: each evaluation converts its own resource and looks up its own
roles.

### What made the engine and the batch path faster (2026-11-26/27)

Consecutive evaluations on the same subject, resource and context share one evaluation
state, moved from action to action, instead of a new `Request` and `Env` per
evaluation; in that group the value of every rule condition that does not read `action`
is computed once (as derived roles already were), an error included, so each decision
still reports it. Each of the 100 evaluations is still decided over its own candidate
rules into its own `Decision`. The group is formed only from values that no condition
can tell apart (`1`, `1.0` and `True` are equal to Python, not to the policy language).
A subject's stored attributes are read once per call. `decide` walks rules unpacked
into tuples at compile time; comparisons and `has` skip the boolean check they can
never fail. The server converts each distinct action of a batch once, builds a batch's
requests without the error path, and makes its decision ids in one go. In-process:
`evaluate` went from 14.9 to 10.5 µs for a check, from 8.5 to 3.3 µs per decision for
the batch on one document and from 16.6 to 8.5 µs on 100 documents; the one-document
Evaluations call from about 1.85 to 1.05 ms.
"""


def median_round(rounds: list[Result]) -> Result:
    """The round with the median server CPU per call."""
    return sorted(rounds, key=lambda r: r.cpu_us_per_call)[len(rounds) // 2]


def per_round_ratio(num: list[Result], den: list[Result], cpu: bool) -> float:
    """Median over rounds of a ratio taken within each round (both saw the same noise)."""
    ratios = [
        (a.cpu_us_per_call / b.cpu_us_per_call) if cpu else (a.decisions_per_s / b.decisions_per_s)
        for a, b in zip(num, den, strict=True)
    ]
    return statistics.median(ratios)


def report(
    rounds: dict[str, list[Result]], concurrency: int, threads: int
) -> tuple[str, float, float, float]:
    results = [median_round(rs) for rs in rounds.values()]
    check = rounds["check"]
    cpu_ratio = per_round_ratio(check, rounds["echo"], cpu=True)
    one = per_round_ratio(rounds["batch of 100, one document"], check, cpu=False)
    many = per_round_ratio(rounds["batch of 100, 100 documents"], check, cpu=False)
    lines = [
        HEADING,
        "",
        f"Loopback, {os.cpu_count()} CPUs, one server process each: `grpc.aio`, calls "
        f"answered on the event loop ({threads} pool threads, idle here), {concurrency} "
        "calls in flight from an asyncio load generator in its own process. Server CPU is the "
        "server process's user+system time over the run divided by the calls. "
        f"{len(check)} interleaved rounds: the table shows each scenario's median round, "
        "the ratios are medians of ratios taken within a round. Request: one subject, "
        "document 42 with two ancestors, one "
        "context attribute. The batches have one subject; the first asks 100 actions on "
        "one document, the second one action on each of 100 documents (nothing shared "
        "but the subject). Every decision was checked for diagnostics.",
        "",
        "| scenario | calls/s | decisions/s | p50 ms | p99 ms | server CPU µs/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.calls_per_s:,.0f} | "
            f"{r.decisions_per_s:,.0f} | {r.pct(0.5):.2f} | {r.pct(0.99):.2f} | "
            f"{r.cpu_us_per_call:,.0f} |"
        )
    lines += [
        "",
        f"- check / echo server CPU per call: **{cpu_ratio:.2f}×** "
        f"(goal ≤ 1.25×: {'met' if cpu_ratio <= 1.25 else 'not met'})",
        f"- batch of 100 on one document / single check, decisions per second: "
        f"**{one:.1f}×** (goal ≥ 20×: {'met' if one >= 20 else 'not met'})",
        f"- batch of 100 on 100 documents / single check, decisions per second: "
        f"**{many:.1f}×** (goal ≥ 20×: {'met' if many >= 20 else 'not met'})",
        "",
        NOTES,
    ]
    return "\n".join(lines), cpu_ratio, one, many


def main(argv: list[str] | None = None) -> Outcome:
    parser = argparse.ArgumentParser(description="gRPC server load benchmark")
    parser.add_argument("--calls", type=int, default=4000, help="single calls per round")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=16, help="server threads (both servers)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv if argv is not None else [])
    results = run(args.calls, args.concurrency, args.rounds, args.threads)
    text, cpu_ratio, one, many = report(results, args.concurrency, args.threads)
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)
    return Outcome(
        True,
        (
            f"check/echo server CPU {cpu_ratio:.2f}x (goal <= 1.25x)",
            f"batch of 100 vs check decisions/s: one document {one:.1f}x, "
            f"100 documents {many:.1f}x (goal >= 20x)",
        ),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
