"""Run every benchmark module in turn and print a summary: `make bench`.

To add a benchmark, write a module with `main() -> benchmarks.timing.Outcome` and
list it in `MODULES`. Modules run one after another, never in parallel, so they do
not steal each other's CPU on the 2-core box.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Mapping, Sequence

from benchmarks.timing import Outcome, machine

MODULES: Sequence[str] = (
    "benchmarks.engine_vs_peers",
    "benchmarks.scaling",
    "benchmarks.store_lookup",
    "benchmarks.server_load",
    "benchmarks.audit_throughput",
    "benchmarks.server_instructions",
    "benchmarks.audit_search",
)

# Arguments for modules whose defaults do not suit `make bench`. audit_search's
# defaults generate 1 and 10 million records (tens of minutes, and gigabytes): here it
# runs on 100,000 so that it ends in a few minutes, and leaves RESULTS.md alone, whose
# figures are for the full sizes (`python -m benchmarks.audit_search` rewrites them).
ARGS: Mapping[str, Sequence[str]] = {
    "benchmarks.audit_search": (
        "--sizes=100000",
        "--sqlite-sizes=100000",
        "--jsonl-size=100000",
        "--no-write",
    ),
}


def main(modules: Sequence[str] = MODULES) -> int:
    """Run each module's `main()`; exit non-zero if any reported a failure or crashed."""
    m = machine()
    print(f"pdp benchmarks: Python {m['python']} ({m['implementation']}), {m['cpus']} CPUs")
    print(f"platform: {m['platform']}\n")
    summary: list[tuple[str, Outcome, float]] = []
    started = time.perf_counter()
    for name in modules:
        start = time.perf_counter()
        try:
            module = importlib.import_module(name)
            args = ARGS.get(name)
            outcome = module.main() if args is None else module.main(list(args))
        except Exception as exc:  # a crashed module must not hide the others' results
            traceback.print_exc()
            outcome = Outcome(False, (f"crashed: {type(exc).__name__}: {exc}",))
        summary.append((name, outcome, time.perf_counter() - start))
        print()
    print("== summary ==")
    for name, outcome, seconds in summary:
        print(f"{'ok  ' if outcome.ok else 'FAIL'} {name} ({seconds:.0f}s)")
        for line in outcome.headline:
            print(f"       {line}")
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0 if all(o.ok for _, o, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
