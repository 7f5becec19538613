"""Taking credentials out of HTTP headers and cookies."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pdp.identity.apikeys import generate_key
from pdp.identity.http import (
    CredentialLocations,
    bearer_token,
    credentials_from_headers,
    parse_cookie_header,
)
from pdp.identity.result import Credential, CredentialKind

B, K, S = CredentialKind.BEARER, CredentialKind.API_KEY, CredentialKind.SESSION
WHERE = CredentialLocations()


def found(
    headers: Mapping[str, tuple[str, ...]], where: CredentialLocations = WHERE
) -> list[tuple[CredentialKind, str]]:
    return [(c.kind, c.value) for c in credentials_from_headers(headers, where)]


def test_each_location() -> None:
    key = generate_key()[2]
    assert found({"authorization": ("Bearer eyJ.a.b",)}) == [(B, "eyJ.a.b")]
    assert found({"authorization": ("bearer   eyJ.a.b ",)}) == [(B, "eyJ.a.b")]
    assert found({"authorization": (f"Bearer {key}",)}) == [(K, key)]  # an API key as bearer
    assert found({"x-api-key": (key,)}) == [(K, key)]
    assert found({"cookie": ("theme=dark; pdp_session=abc; lang=en",)}) == [(S, "abc")]


def test_what_is_not_ours_is_ignored() -> None:
    assert found({"authorization": ("Basic dXNlcjpwdw==",)}) == []
    assert found({"cookie": ("other=1",)}) == []
    assert found({"x-other": ("Bearer x",)}) == []


def test_an_empty_bearer_is_a_credential_that_will_fail_not_no_credential() -> None:
    assert found({"authorization": ("Bearer",)}) == [(B, "")]
    assert found({"authorization": ("Bearer ",)}) == [(B, "")]


def test_duplicates_are_all_reported_so_they_can_be_refused() -> None:
    assert found({"authorization": ("Bearer a.b.c", "Bearer d.e.f")}) == [
        (B, "a.b.c"),
        (B, "d.e.f"),
    ]
    assert found({"cookie": ("pdp_session=one", "pdp_session=two")}) == [(S, "one"), (S, "two")]
    assert found({"cookie": ("pdp_session=one; pdp_session=two",)}) == [(S, "one"), (S, "two")]
    # Two Cookie lines joined by a proxy with `,`, as Envoy's header map may send them.
    assert found({"cookie": ("a=1; pdp_session=one,pdp_session=two",)}) == [
        (S, "one"),
        (S, "two"),
    ]


def test_locations_are_configurable() -> None:
    where = CredentialLocations(
        bearer=False, api_key_header="X-Key", api_key_in_bearer=False, session_cookie="sid"
    )
    assert where.api_key_header == "x-key"
    headers = {"authorization": ("Bearer t",), "x-key": ("k",), "cookie": ("sid=s",)}
    assert found(headers, where) == [(K, "k"), (S, "s")]
    assert where.sensitive_headers() == {"authorization", "proxy-authorization", "cookie", "x-key"}


@pytest.mark.parametrize(
    ("value", "token"),
    [("Bearer abc", "abc"), ("BEARER abc", "abc"), ("Basic abc", None), ("Bearerabc", None)],
)
def test_bearer_token(value: str, token: str | None) -> None:
    assert bearer_token(value) == token


def test_cookie_header_parsing_keeps_order_and_unquotes() -> None:
    assert parse_cookie_header('a=1; b="two"; junk; =x; c=') == [
        ("a", "1"),
        ("b", "two"),
        ("c", ""),
    ]


def test_credentials_never_show_their_value() -> None:
    c = Credential(CredentialKind.API_KEY, "pdp_secret_value")
    assert "secret" not in repr(c) and "secret" not in str(c)
