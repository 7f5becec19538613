"""A second PDP process for the propagation test: `python -m tests.store.peer URL SUBJECT`.

It loads the tests' policies, answers "may SUBJECT update document/42?" through a
`CachedRoleSource` on the shared database over and over (from its cache), and prints
`ready` once allowed, then the wall-clock time at which the answer became a deny,
with its cache counters, as JSON on one line.
"""

from __future__ import annotations

import json
import sys
import time

from pdp.engine.compile import compile_policy_set
from pdp.engine.request import Action, Request, Resource, Subject
from pdp.evaluation import evaluate
from pdp.lang.load import load_texts
from pdp.store.cache import CachedRoleSource
from pdp.store.sql import SqlStore
from tests.store.support import POLICIES


def main(argv: list[str]) -> int:
    url, who = argv[0], argv[1]
    listen = len(argv) < 3 or argv[2] != "--no-listen"
    policy = compile_policy_set(load_texts(POLICIES).unwrap())
    req = Request(
        Subject("user", who), Action("update"), Resource("document", "42", {"tenant": "acme"})
    )
    store = SqlStore(url)
    deadline = time.monotonic() + 30
    with CachedRoleSource(store, listen=listen) as cache:  # defaults: poll every 1 s
        while not evaluate(policy, [req], cache)[0].allowed:
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.01)
        print("ready", flush=True)
        while evaluate(policy, [req], cache)[0].allowed:
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.001)
        seen = time.time()
        out = {"seen": seen, "hits": cache.hits, "misses": cache.misses}
    store.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
