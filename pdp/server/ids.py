"""Decision ids: UUIDv7 strings, unique and sortable by the millisecond they were made."""

from __future__ import annotations

import os
import random
import time

_RAND_B = (1 << 62) - 1

# Ids must be unique, not secret: a PRNG seeded from the OS is enough and avoids a
# system call per decision. Each forked worker reseeds, so workers never share a stream.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_decision_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits.

    Sortable by time, so the audit log can page through decisions in order; random
    enough that ids from several processes or replicas never collide.
    """
    ms = time.time_ns() // 1_000_000
    r = _random.getrandbits(74)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | ((r >> 62) & 0xFFF) << 64
        | 0b10 << 62  # RFC 9562 variant
        | (r & _RAND_B)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_decision_ids(n: int) -> list[str]:
    """`n` ids for one call's decisions: as `new_decision_id`, made in one go."""
    if n == 1:
        return [new_decision_id()]
    head = ((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62
    bits = _random.getrandbits
    out = []
    for _ in range(n):
        r = bits(74)
        h = f"{head | ((r >> 62) & 0xFFF) << 64 | (r & _RAND_B):032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
