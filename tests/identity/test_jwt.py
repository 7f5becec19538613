"""Bearer JWTs: every way a token can be wrong, and the cause each one records."""

from __future__ import annotations

import json
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import jwt
import pytest

from pdp.identity.jwks import JwksCache
from pdp.identity.jwt import (
    ClaimMapping,
    JwtResolver,
    JwtSettings,
    MemoryRevocations,
    RevocationCheck,
    claim,
)
from pdp.identity.result import AuthnFailure, Cause, CredentialKind, Identity
from tests.identity.keys import (
    AUDIENCE,
    ISSUER,
    NOW,
    T,
    b64,
    claims,
    ec_key,
    ed_key,
    hmac_signed,
    jwks,
    public_jwk,
    public_pem,
    rsa_key,
    token,
    unsigned,
)


class Fetcher:
    """A JWKS endpoint in memory: what it serves can change, and fetches are counted."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.body


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def standard_jwks() -> bytes:
    return jwks(
        public_jwk(rsa_key(), "rsa-1"),
        public_jwk(ec_key(), "ec-1"),
        public_jwk(ed_key(), "ed-1"),
    )


def resolver(
    *,
    body: bytes | None = None,
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA"),
    revocations: RevocationCheck | None = None,
    mapping: ClaimMapping | None = None,
    **settings: Any,
) -> tuple[JwtResolver, Fetcher, Clock]:
    fetch = Fetcher(body if body is not None else standard_jwks())
    clock = Clock()
    cache = JwksCache(fetch, algorithms=algorithms, min_refresh_interval=30, clock=clock)
    s = JwtSettings(
        issuer=ISSUER,
        audiences=(AUDIENCE,),
        algorithms=algorithms,
        claims=mapping
        or ClaimMapping(properties=MappingProxyType({"tenant": "tenant", "email": "email"})),
        **settings,
    )
    return JwtResolver(s, cache, is_revoked=revocations), fetch, clock


def cause(result: object) -> Cause:
    assert isinstance(result, AuthnFailure), result
    return result.cause


# --- tokens that are good ----------------------------------------------------------------


def test_a_valid_rs256_token_names_its_subject_scopes_and_claims() -> None:
    r, _, _ = resolver()
    ident = r.resolve(token(), NOW)
    assert isinstance(ident, Identity)
    assert ident.subject.key == "user:alice"
    assert dict(ident.subject.properties) == {"tenant": "acme"}  # absent `email` left out
    assert ident.scopes == ("documents:read", "documents:write")
    assert ident.kind is CredentialKind.BEARER
    assert ident.credential_id == "tok-1"
    assert ident.issuer == ISSUER
    assert ident.expires_at == NOW + timedelta(seconds=600)
    assert ident.context()["method"] == "bearer"


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [
        (ec_key(), "ec-1", "ES256"),
        (rsa_key(), "rsa-1", "PS256"),  # an RSA JWK without `alg` serves every RSA algorithm
        (ed_key(), "ed-1", "EdDSA"),
    ],
)
def test_other_allowed_algorithms_verify(key: Any, kid: str, alg: str) -> None:
    r, _, _ = resolver()
    assert isinstance(r.resolve(token(key, kid, alg), NOW), Identity)


def test_leeway_tolerates_small_clock_skew_only() -> None:
    r, _, _ = resolver(leeway=30)
    assert isinstance(r.resolve(token(exp=T - 10), NOW), Identity)
    assert isinstance(r.resolve(token(nbf=T + 10, iat=T + 10), NOW), Identity)
    assert cause(r.resolve(token(exp=T - 31), NOW)) is Cause.TOKEN_EXPIRED
    assert cause(r.resolve(token(exp=T - 30), NOW)) is Cause.TOKEN_EXPIRED  # exp is exclusive


def test_an_audience_list_needs_only_to_contain_ours() -> None:
    r, _, _ = resolver()
    assert isinstance(r.resolve(token(aud=["other", AUDIENCE]), NOW), Identity)


# --- tokens that are not -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": T - 3600}, Cause.TOKEN_EXPIRED),
        ({"nbf": T + 3600}, Cause.TOKEN_NOT_YET_VALID),
        ({"iat": T + 3600, "nbf": None}, Cause.TOKEN_NOT_YET_VALID),
        ({"aud": "billing-api"}, Cause.WRONG_AUDIENCE),
        ({"aud": ["billing-api", "other"]}, Cause.WRONG_AUDIENCE),
        ({"iss": "https://evil.example.com"}, Cause.WRONG_ISSUER),
        ({"iss": None}, Cause.MISSING_CLAIM),
        ({"aud": None}, Cause.MISSING_CLAIM),
        ({"exp": None}, Cause.MISSING_CLAIM),
        ({"sub": None}, Cause.MISSING_CLAIM),
        ({"sub": "alice smith"}, Cause.BAD_CLAIM),  # would break `type:id` and headers
        ({"sub": "alice\r\nx-pdp-subject: admin"}, Cause.BAD_CLAIM),
        ({"sub": 42}, Cause.BAD_CLAIM),
        ({"exp": "tomorrow"}, Cause.BAD_CLAIM),
        ({"aud": 7}, Cause.BAD_CLAIM),
        ({"scope": {"read": True}}, Cause.BAD_CLAIM),
    ],
)
def test_claim_failures_have_their_own_cause(overrides: dict[str, Any], expected: Cause) -> None:
    r, _, _ = resolver()
    result = r.resolve(token(**overrides), NOW)
    assert cause(result) is expected
    assert isinstance(result, AuthnFailure)
    assert result.credential_id == "tok-1"  # authentic token: its jti may name it


def test_a_signature_by_another_key_is_a_bad_signature() -> None:
    r, _, _ = resolver()
    forged = token(rsa_key("attacker"), kid="rsa-1")
    result = r.resolve(forged, NOW)
    assert cause(result) is Cause.BAD_SIGNATURE
    assert isinstance(result, AuthnFailure)
    assert result.credential_id == ""  # an unverified jti names nothing


def test_a_typ_allow_list_keeps_id_tokens_out() -> None:
    r, _, _ = resolver(token_types=("at+jwt",))
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):  # compared as media types
        assert isinstance(r.resolve(token(headers={"typ": typ}), NOW), Identity), typ
    for headers in ({"typ": "JWT"}, {}, {"typ": 7}):  # an ID token, none, nonsense
        result = r.resolve(token(headers=headers), NOW)
        assert cause(result) is Cause.WRONG_TOKEN_TYPE, headers
    # Without a list (the default) any typ is accepted, as most issuers send `JWT`.
    plain, _, _ = resolver()
    assert isinstance(plain.resolve(token(headers={"typ": "JWT"}), NOW), Identity)
    # The signature is checked first: a forged token is a bad signature, whatever typ.
    forged = token(rsa_key("attacker"), headers={"typ": "JWT"})
    assert cause(r.resolve(forged, NOW)) is Cause.BAD_SIGNATURE


def test_a_changed_payload_breaks_the_signature() -> None:
    r, _, _ = resolver()
    head, _, sig = token().split(".")
    evil = b64(json.dumps(claims(sub="admin")).encode())
    assert cause(r.resolve(f"{head}.{evil}.{sig}", NOW)) is Cause.BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    r, _, _ = resolver()
    bare = unsigned({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, claims())
    assert cause(r.resolve(bare, NOW)) is Cause.ALG_NOT_ALLOWED
    # With a made-up signature too.
    assert cause(r.resolve(bare + "c2ln", NOW)) is Cause.ALG_NOT_ALLOWED


def test_hmac_with_the_rsa_public_key_as_secret_is_refused() -> None:
    """The classic key-confusion attack: HS256 keyed with the issuer's public key."""
    r, _, _ = resolver()
    forged = hmac_signed({"alg": "HS256", "kid": "rsa-1"}, claims(), public_pem(rsa_key()))
    assert cause(r.resolve(forged, NOW)) is Cause.ALG_NOT_ALLOWED


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "none"])
def test_hmac_and_none_cannot_even_be_configured(alg: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        JwtSettings(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256", alg))


def test_an_algorithm_off_the_allow_list_is_refused_before_any_key_is_sought() -> None:
    r, fetch, _ = resolver(algorithms=("RS256",))
    result = r.resolve(token(ec_key(), "ec-1", "ES256"), NOW)
    assert cause(result) is Cause.ALG_NOT_ALLOWED
    assert fetch.calls == 0


def test_a_key_pinned_to_one_algorithm_is_not_used_with_another() -> None:
    body = jwks(public_jwk(rsa_key(), "rsa-1", alg="RS256"))
    r, _, _ = resolver(body=body)
    assert isinstance(r.resolve(token(alg="RS256"), NOW), Identity)
    assert cause(r.resolve(token(alg="PS256"), NOW)) is Cause.UNKNOWN_KID


def test_a_key_brought_by_the_token_itself_is_ignored() -> None:
    attacker = rsa_key("attacker")
    embedded = {"jwk": public_jwk(attacker, "evil"), "jku": "https://evil.example.com/jwks"}
    r, _, _ = resolver()
    assert cause(r.resolve(token(attacker, "evil", headers=embedded), NOW)) is Cause.UNKNOWN_KID
    assert cause(r.resolve(token(attacker, "rsa-1", headers=embedded), NOW)) is Cause.BAD_SIGNATURE


def test_an_unknown_kid_refreshes_the_key_set_at_most_once_per_interval() -> None:
    r, fetch, clock = resolver()
    assert isinstance(r.resolve(token(), NOW), Identity)
    assert fetch.calls == 1
    clock.t += 60  # the key set is a minute old: a refresh is allowed
    for i in range(20):  # a flood of made-up kids
        assert cause(r.resolve(token(kid=f"nope-{i}"), NOW)) is Cause.UNKNOWN_KID
    assert fetch.calls == 2  # one refresh, then rate-limited


def test_a_rotated_key_is_picked_up_on_first_use() -> None:
    r, fetch, clock = resolver()
    assert isinstance(r.resolve(token(), NOW), Identity)
    fetch.body = jwks(public_jwk(rsa_key(), "rsa-1"), public_jwk(rsa_key("rsa-2"), "rsa-2"))
    clock.t += 31
    assert isinstance(r.resolve(token(rsa_key("rsa-2"), "rsa-2"), NOW), Identity)
    assert fetch.calls == 2


def test_a_token_without_kid_is_accepted_only_when_one_key_fits() -> None:
    one, _, _ = resolver(body=jwks(public_jwk(rsa_key(), None)))
    assert isinstance(one.resolve(token(kid=None), NOW), Identity)
    two, _, _ = resolver()
    two_rsa, _, _ = resolver(
        body=jwks(public_jwk(rsa_key(), "rsa-1"), public_jwk(rsa_key("rsa-2"), "rsa-2"))
    )
    assert isinstance(two.resolve(token(kid=None), NOW), Identity)  # the only RSA key
    assert cause(two_rsa.resolve(token(kid=None), NOW)) is Cause.UNKNOWN_KID  # no guessing


def test_no_key_set_at_all_is_jwks_unavailable() -> None:
    def down() -> bytes:
        raise OSError("connection refused")

    cache = JwksCache(down, algorithms=("RS256",))
    r = JwtResolver(JwtSettings(issuer=ISSUER, audiences=(AUDIENCE,)), cache)
    assert cause(r.resolve(token(), NOW)) is Cause.JWKS_UNAVAILABLE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-token",
        "a.b",
        "a.b.c.d.e",  # a JWE
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln!",
        "x" * 9000,
    ],
)
def test_malformed_tokens(text: str) -> None:
    r, _, _ = resolver()
    assert cause(r.resolve(text, NOW)) is Cause.TOKEN_MALFORMED


def test_a_critical_header_extension_is_refused() -> None:
    r, _, _ = resolver()
    t = token(headers={"crit": ["exp"], "exp": 1})
    assert cause(r.resolve(t, NOW)) is Cause.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'{"iss": "https://id.example.com", "exp": NaN}'],
)
def test_signed_payloads_that_are_not_claims(payload: bytes) -> None:
    r, _, _ = resolver()
    t = jwt.api_jws.PyJWS().encode(payload, rsa_key(), algorithm="RS256", headers={"kid": "rsa-1"})
    assert cause(r.resolve(t, NOW)) in (Cause.TOKEN_MALFORMED, Cause.MISSING_CLAIM, Cause.BAD_CLAIM)


def test_nan_expiry_never_means_never_expires() -> None:
    r, _, _ = resolver()
    body = b'{"iss": "https://id.example.com", "aud": "docs-api", "sub": "alice", "exp": NaN}'
    t = jwt.api_jws.PyJWS().encode(body, rsa_key(), algorithm="RS256", headers={"kid": "rsa-1"})
    assert cause(r.resolve(t, NOW)) is Cause.BAD_CLAIM


# --- revocation ---------------------------------------------------------------------------


def test_a_revoked_jti_is_refused() -> None:
    rev = MemoryRevocations()
    r, _, _ = resolver(revocations=rev)
    assert isinstance(r.resolve(token(), NOW), Identity)
    rev.revoke_token("tok-1")
    assert cause(r.resolve(token(), NOW)) is Cause.TOKEN_REVOKED
    assert isinstance(r.resolve(token(jti="tok-2"), NOW), Identity)


def test_revoking_a_subject_refuses_tokens_issued_before_the_cutoff_only() -> None:
    rev = MemoryRevocations()
    r, _, _ = resolver(revocations=rev)
    rev.revoke_subject("user:alice", NOW - timedelta(seconds=30))
    assert cause(r.resolve(token(iat=T - 60), NOW)) is Cause.TOKEN_REVOKED
    assert isinstance(r.resolve(token(iat=T - 10), NOW), Identity)  # a fresh login
    assert cause(r.resolve(token(iat=None), NOW)) is Cause.TOKEN_REVOKED  # no iat: fail closed
    assert isinstance(r.resolve(token(sub="bob", iat=T - 60), NOW), Identity)


def test_the_revocation_check_gets_what_the_store_needs() -> None:
    seen: list[tuple[Any, ...]] = []

    def check(jti: str | None, subject: str, issued_at: Any) -> bool:
        seen.append((jti, subject, issued_at))
        return False

    r, _, _ = resolver(revocations=check)
    assert isinstance(r.resolve(token(), NOW), Identity)
    assert seen == [("tok-1", "user:alice", NOW - timedelta(seconds=60))]


def test_a_failing_revocation_store_refuses_the_token() -> None:
    def down(jti: str | None, subject: str, issued_at: Any) -> bool:
        raise ConnectionError("database down")

    r, _, _ = resolver(revocations=down)
    assert cause(r.resolve(token(), NOW)) is Cause.STORE_UNAVAILABLE


# --- claim mapping ------------------------------------------------------------------------


def test_claims_map_to_subject_type_id_and_nested_properties() -> None:
    mapping = ClaimMapping(
        subject_id="preferred_username",
        type_claim="typ",
        allowed_types=("user", "service"),
        properties=MappingProxyType(
            {"roles": "realm_access.roles", "tenant": "https://example.com/tenant"}
        ),
        scopes="scp",
    )
    r, _, _ = resolver(mapping=mapping)
    t = token(
        preferred_username="svc-billing",
        typ="service",
        realm_access={"roles": ["reader"]},
        scp=["a", "b"],
        **{"https://example.com/tenant": "acme"},
    )
    ident = r.resolve(t, NOW)
    assert isinstance(ident, Identity)
    assert ident.subject.key == "service:svc-billing"
    assert dict(ident.subject.properties) == {"roles": ["reader"], "tenant": "acme"}
    assert ident.scopes == ("a", "b")
    assert cause(r.resolve(token(preferred_username="x", typ="admin"), NOW)) is Cause.BAD_CLAIM
    assert cause(r.resolve(token(preferred_username="x"), NOW)) is Cause.MISSING_CLAIM  # no typ


def test_a_token_without_its_subject_claim_is_a_missing_claim() -> None:
    """The audit log says which claim was absent, as for `iss`, `aud` and `exp`; a
    subject claim that is present but unusable stays `bad_claim`."""
    r, _, _ = resolver()
    result = r.resolve(token(sub=None), NOW)
    assert isinstance(result, AuthnFailure)
    assert result.audit() == {
        "result": "failed",
        "cause": "missing_claim",
        "method": "bearer",
        "credential": "tok-1",
        "detail": "sub",
    }
    assert cause(r.resolve(token(sub=""), NOW)) is Cause.BAD_CLAIM


def test_claim_paths() -> None:
    c = {"a": {"b": {"c": 1}}, "x.y": 2}
    assert claim(c, "a.b.c") == 1
    assert claim(c, "x.y") == 2
    assert claim(c, "a.z") is None
    assert claim(c, "a.b.c.d") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuer": ""},
        {"audiences": ()},
        {"algorithms": ()},
        {"leeway": 3600},
        {"leeway": -1},
        {"claims": ClaimMapping(type_claim="typ")},
        {"claims": ClaimMapping(subject_type="not a type")},
    ],
)
def test_settings_are_checked(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,)}
    with pytest.raises(ValueError):
        JwtSettings(**{**base, **kwargs})
