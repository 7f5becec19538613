"""API keys: format, storage, every failure cause, rotation, and no timing oracle."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from pdp.identity import apikeys
from pdp.identity.apikeys import (
    ApiKeyError,
    ApiKeyRecord,
    ApiKeyResolver,
    ApiKeys,
    KeyHasher,
    MemoryApiKeys,
    display,
    generate_key,
    looks_like_api_key,
    parse_key,
)
from pdp.identity.result import AuthnFailure, Cause, CredentialKind, Identity
from tests.identity.keys import NOW

PEPPER = b"p" * 32
LATER = NOW + timedelta(hours=1)


class CountingHasher(KeyHasher):
    """Counts the MACs computed: the work a resolution does."""

    def __init__(self) -> None:
        super().__init__(PEPPER)
        self.digests = 0

    def digest(self, prefix: str, secret: str) -> bytes:
        self.digests += 1
        return super().digest(prefix, secret)


def setup(
    hasher: KeyHasher | None = None,
) -> tuple[ApiKeys, ApiKeyResolver, MemoryApiKeys, KeyHasher]:
    repo = MemoryApiKeys()
    h = hasher or KeyHasher(PEPPER)
    return ApiKeys(repo, h), ApiKeyResolver(repo, h), repo, h


def cause(result: object) -> Cause:
    assert isinstance(result, AuthnFailure), result
    return result.cause


def test_keys_have_the_documented_format_and_are_random() -> None:
    prefix, secret, key = generate_key()
    assert key == f"pdp_{prefix}_{secret}"
    assert parse_key(key) == (prefix, secret)
    assert len(prefix) == 12 and len(secret) == 43
    assert looks_like_api_key(key) and not looks_like_api_key("eyJhbGciOi...")
    assert len({generate_key()[2] for _ in range(100)}) == 100


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pdp_",
        "pdp_short_secret",
        "xyz_abcdefghijkl_" + "A" * 43,
        "pdp_ABCDEFGHIJKL_" + "A" * 43,
    ],
)
def test_malformed_keys_do_not_parse(text: str) -> None:
    assert parse_key(text) is None


def test_a_created_key_is_stored_only_as_a_digest() -> None:
    keys, _, repo, hasher = setup()
    issued = keys.create("service", "billing", now=NOW, name="ci", scopes=["documents:read"])
    prefix, secret = parse_key(issued.key) or ("", "")
    stored = repo.get(prefix)
    assert stored is not None
    assert stored.digest == hasher.digest(prefix, secret)
    assert secret not in repr(stored) and secret.encode() not in stored.digest
    assert stored.subject_key == "service:billing" and stored.scopes == ("documents:read",)


def test_a_valid_key_authenticates_with_its_scopes() -> None:
    keys, resolver, _, _ = setup()
    issued = keys.create("service", "billing", now=NOW, scopes=["documents:read"])
    ident = resolver.resolve(issued.key, NOW)
    assert isinstance(ident, Identity)
    assert ident.subject.key == "service:billing"
    assert ident.kind is CredentialKind.API_KEY
    assert ident.scopes == ("documents:read",)
    assert ident.credential_id == issued.record.prefix
    assert issued.key not in repr(ident)


def test_last_use_is_recorded_but_not_on_every_request() -> None:
    keys, resolver, repo, _ = setup()
    issued = keys.create("service", "billing", now=NOW)
    prefix = issued.record.prefix
    resolver.resolve(issued.key, NOW)
    assert repo.get(prefix).last_used_at == NOW  # type: ignore[union-attr]
    resolver.resolve(issued.key, NOW + timedelta(seconds=30))
    assert repo.get(prefix).last_used_at == NOW  # type: ignore[union-attr]
    resolver.resolve(issued.key, NOW + timedelta(seconds=61))
    assert repo.get(prefix).last_used_at == NOW + timedelta(seconds=61)  # type: ignore[union-attr]


def test_every_failure_has_its_cause() -> None:
    keys, resolver, _, _ = setup()
    good = keys.create("service", "a", now=NOW)
    expiring = keys.create("service", "b", now=NOW, expires_at=NOW + timedelta(minutes=5))
    revoked = keys.create("service", "c", now=NOW)
    keys.revoke(revoked.record.prefix, now=NOW)
    prefix = good.record.prefix
    other_secret = generate_key()[1]

    assert cause(resolver.resolve("not-a-key", NOW)) is Cause.KEY_MALFORMED
    assert cause(resolver.resolve(generate_key()[2], NOW)) is Cause.KEY_UNKNOWN
    assert cause(resolver.resolve(f"pdp_{prefix}_{other_secret}", NOW)) is Cause.KEY_MISMATCH
    assert isinstance(resolver.resolve(expiring.key, NOW), Identity)
    assert cause(resolver.resolve(expiring.key, LATER)) is Cause.KEY_EXPIRED
    assert cause(resolver.resolve(revoked.key, NOW)) is Cause.KEY_REVOKED


def test_a_digest_is_bound_to_its_prefix() -> None:
    """A digest copied onto another row verifies nothing."""
    repo, hasher = MemoryApiKeys(), KeyHasher(PEPPER)
    prefix_a, secret_a, _ = generate_key()
    prefix_b = generate_key()[0]
    repo.add(
        ApiKeyRecord(
            prefix=prefix_b,
            digest=hasher.digest(prefix_a, secret_a),  # a's digest on b's row
            subject_type="service",
            subject_id="b",
            created_at=NOW,
        )
    )
    forged = f"pdp_{prefix_b}_{secret_a}"
    assert cause(ApiKeyResolver(repo, hasher).resolve(forged, NOW)) is Cause.KEY_MISMATCH


def test_rotation_keeps_the_old_key_for_the_overlap_window_only() -> None:
    keys, resolver, repo, _ = setup()
    old = keys.create("service", "billing", now=NOW, scopes=["x"], name="deploy")
    new = keys.rotate(old.record.prefix, now=NOW, overlap=timedelta(minutes=10))
    assert new.record.subject_key == "service:billing"
    assert new.record.scopes == ("x",) and new.record.name == "deploy"
    assert isinstance(resolver.resolve(old.key, NOW + timedelta(minutes=9)), Identity)
    assert isinstance(resolver.resolve(new.key, NOW + timedelta(minutes=9)), Identity)
    after = NOW + timedelta(minutes=10)
    result = resolver.resolve(old.key, after)
    assert cause(result) is Cause.KEY_ROTATED
    assert isinstance(result, AuthnFailure) and new.record.prefix in result.detail
    assert isinstance(resolver.resolve(new.key, after), Identity)
    assert repo.get(old.record.prefix).state(after) == "rotated"  # type: ignore[union-attr]
    with pytest.raises(ApiKeyError, match="rotated"):
        keys.rotate(old.record.prefix, now=after, overlap=timedelta(0))


def test_rotation_accepts_the_displayed_form_people_copy() -> None:
    keys, resolver, repo, _ = setup()
    old = keys.create("service", "billing", now=NOW)
    new = keys.rotate(display(old.record.prefix), now=NOW, overlap=timedelta(0))
    assert repo.get(old.record.prefix).state(NOW) == "rotated"  # type: ignore[union-attr]
    assert cause(resolver.resolve(old.key, NOW)) is Cause.KEY_ROTATED
    assert isinstance(resolver.resolve(new.key, NOW), Identity)


def test_rotation_carries_the_key_lifetime_over() -> None:
    keys, _, _, _ = setup()
    old = keys.create("service", "a", now=NOW, expires_at=NOW + timedelta(days=90))
    new = keys.rotate(old.record.prefix, now=NOW + timedelta(days=80), overlap=timedelta(days=1))
    assert new.record.expires_at == NOW + timedelta(days=170)


def test_rotation_never_extends_the_old_key() -> None:
    keys, _, repo, _ = setup()
    old = keys.create("service", "a", now=NOW, expires_at=NOW + timedelta(hours=1))
    keys.rotate(old.record.prefix, now=NOW, overlap=timedelta(days=7))
    assert repo.get(old.record.prefix).expires_at == NOW + timedelta(hours=1)  # type: ignore[union-attr]


def test_management_errors() -> None:
    keys, _, _, _ = setup()
    with pytest.raises(ApiKeyError):
        keys.create("service", "has space", now=NOW)
    with pytest.raises(ApiKeyError):
        keys.create("service", "a", now=NOW, expires_at=NOW)
    with pytest.raises(ApiKeyError, match="no API key"):
        keys.revoke("aaaaaaaaaaaa", now=NOW)
    with pytest.raises(ApiKeyError, match="not an API key prefix"):
        keys.revoke("nope", now=NOW)
    issued = keys.create("service", "a", now=NOW)
    keys.revoke(f"pdp_{issued.record.prefix}_…", now=NOW)  # the displayed form works too
    assert [r.prefix for r in keys.list("service:a")] == [issued.record.prefix]


def test_a_short_pepper_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyHasher(b"short")


def test_a_failing_store_is_a_failure_not_an_error() -> None:
    class Down(MemoryApiKeys):
        def get(self, prefix: str) -> ApiKeyRecord | None:
            raise ConnectionError("database down")

    resolver = ApiKeyResolver(Down(), KeyHasher(PEPPER))
    assert cause(resolver.resolve(generate_key()[2], NOW)) is Cause.STORE_UNAVAILABLE


def test_a_failing_last_use_write_does_not_fail_the_request() -> None:
    class NoTouch(MemoryApiKeys):
        def touch(self, prefix: str, at: object) -> None:
            raise ConnectionError("read-only replica")

    repo = NoTouch()
    keys = ApiKeys(repo, KeyHasher(PEPPER))
    issued = keys.create("service", "a", now=NOW)
    assert isinstance(ApiKeyResolver(repo, KeyHasher(PEPPER)).resolve(issued.key, NOW), Identity)


def test_a_failing_last_use_write_is_retried_once_per_interval_not_per_request() -> None:
    class Flaky(MemoryApiKeys):
        fail = True
        attempts = 0

        def touch(self, prefix: str, at: datetime) -> None:
            self.attempts += 1
            if self.fail:
                raise ConnectionError("database is locked")
            super().touch(prefix, at)

    repo = Flaky()
    issued = ApiKeys(repo, KeyHasher(PEPPER)).create("service", "a", now=NOW)
    resolver = ApiKeyResolver(repo, KeyHasher(PEPPER))
    for s in range(0, 60, 5):  # twelve requests within a minute: one attempt
        assert isinstance(resolver.resolve(issued.key, NOW + timedelta(seconds=s)), Identity)
    assert repo.attempts == 1
    repo.fail = False
    resolver.resolve(issued.key, NOW + timedelta(seconds=61))  # the next interval: again
    assert repo.attempts == 2
    assert repo.get(issued.record.prefix).last_used_at == NOW + timedelta(seconds=61)  # type: ignore[union-attr]


# --- no timing oracle: the same work whatever the failure ----------------------------------


def test_unknown_wrong_malformed_and_valid_keys_cost_the_same_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instead of timing: count the MACs and constant-time comparisons, and what they
    compared, for each outcome. They must not differ."""
    compared: list[tuple[int, int]] = []
    real = apikeys.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(apikeys, "compare_digest", counting)
    hasher = CountingHasher()
    keys, resolver, repo, _ = setup(hasher)
    good = keys.create("service", "a", now=NOW)
    lookups: list[str] = []
    real_get = repo.get

    def counting_get(prefix: str) -> ApiKeyRecord | None:
        lookups.append(prefix)
        return real_get(prefix)

    monkeypatch.setattr(repo, "get", counting_get)

    work = {}
    for label, key in {
        "valid": good.key,
        "unknown": generate_key()[2],
        "wrong secret": f"pdp_{good.record.prefix}_{generate_key()[1]}",
        "malformed": "pdp_garbage",
    }.items():
        hasher.digests, compared[:], lookups[:] = 0, [], []
        resolver.resolve(key, NOW + timedelta(hours=2))  # past the last-use throttle
        work[label] = (hasher.digests, list(compared), len(lookups))

    assert work["unknown"] == work["wrong secret"] == work["valid"] == (1, [(32, 32)], 1)
    # A malformed key skips only the store lookup (its format is public knowledge).
    assert work["malformed"] == (1, [(32, 32)], 0)


def test_failures_carry_no_secret() -> None:
    keys, resolver, _, _ = setup()
    good = keys.create("service", "a", now=NOW)
    _, secret = parse_key(good.key) or ("", "")
    wrong = f"pdp_{good.record.prefix}_{generate_key()[1]}"
    for key in (wrong, good.key + "x", generate_key()[2]):
        result = resolver.resolve(key, NOW)
        assert isinstance(result, AuthnFailure)
        text = repr(result) + str(result.audit())
        assert secret not in text and key.rsplit("_", 1)[-1] not in text
