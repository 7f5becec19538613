"""Run every benchmark module in turn and print a summary: `make bench`.

To add a benchmark, write a module with `main() -> benchmarks.timing.Outcome` and
list it in `MODULES`. Modules run one after another, never in parallel, so they do
not steal each other's CPU on the 2-core box.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Sequence

from benchmarks.timing import Outcome, machine

MODULES: Sequence[str] = (
    "benchmarks.engine_vs_peers",
    "benchmarks.scaling",
    "benchmarks.store_lookup",
    "benchmarks.server_load",
)


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
            outcome = importlib.import_module(name).main()
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
