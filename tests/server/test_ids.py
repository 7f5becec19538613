"""Decision ids: UUIDv7, unique, ordered by the millisecond they were made."""

from __future__ import annotations

import time
import uuid

from pdp.server.ids import new_decision_id, new_decision_ids


def test_ids_are_uuid7_with_the_rfc_variant() -> None:
    for text in [new_decision_id(), *new_decision_ids(1), *new_decision_ids(50)]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert str(u) == text  # lower-case, canonical hyphens


def test_ids_are_unique_within_and_across_calls() -> None:
    ids = [i for _ in range(200) for i in new_decision_ids(100)]
    ids += [new_decision_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)


def test_ids_carry_the_time_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    batch = new_decision_ids(10)
    after = time.time_ns() // 1_000_000
    for text in batch:
        ms = uuid.UUID(text).int >> 80
        assert before <= ms <= after
