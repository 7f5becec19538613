"""The server's resolvers as `pdp.server.identity` builds them from `[identity]` settings."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

import pdp.server.identity as server_identity
from pdp.identity.result import AuthnFailure, Cause, Credential, CredentialKind, Identity
from pdp.identity.revocation import RevocationCache
from pdp.server.config import load_config
from pdp.server.identity import ServerIdentity, build_identity
from pdp.store.identity import SqlTokenRevocations
from pdp.store.sql import SqlStore
from tests.identity.keys import AUDIENCE, ISSUER, NOW, jwks, public_jwk, rsa_key, token


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The revocation list's clock, as the server's cache reads it."""
    c = Clock()
    monkeypatch.setattr(
        server_identity, "RevocationCache", functools.partial(RevocationCache, clock=c)
    )
    return c


@pytest.fixture
def identity(tmp_path: Path, clock: Clock) -> Iterator[tuple[ServerIdentity, str]]:
    (tmp_path / "jwks.json").write_bytes(jwks(public_jwk(rsa_key(), "rsa-1")))
    (tmp_path / "policies").mkdir()
    url = f"sqlite:///{tmp_path / 'pdp.db'}"
    cfg = load_config(
        None,
        environ={},
        flags={
            "policies": str(tmp_path / "policies"),
            "store.url": url,
            "identity.jwt.issuer": ISSUER,
            "identity.jwt.audiences": [AUDIENCE],
            "identity.jwt.algorithms": ["RS256"],
            "identity.jwt.jwks_file": str(tmp_path / "jwks.json"),
        },
    )
    ident = build_identity(cfg)
    try:
        yield ident, url
    finally:
        ident.close()


def bearer(ident: ServerIdentity, tok: str) -> Identity | AuthnFailure:
    return ident.authenticator.authenticate([Credential(CredentialKind.BEARER, tok)], NOW)


def test_after_a_quiet_spell_the_revocation_list_is_read_again_before_deciding(
    identity: tuple[ServerIdentity, str], clock: Clock
) -> None:
    """Regression: after a minute without bearer traffic the first valid token was
    refused (`store_unavailable`) although the database was healthy."""
    ident, url = identity
    assert isinstance(bearer(ident, token()), Identity)  # the first check reads the list
    with SqlStore(url) as store:
        SqlTokenRevocations(store).revoke_token("tok-2", issuer=ISSUER)
    clock.t += 61  # past the list's staleness bound (60 s), with nobody asking
    assert isinstance(bearer(ident, token()), Identity)
    revoked = bearer(ident, token(jti="tok-2"))  # decided on the list just read
    assert isinstance(revoked, AuthnFailure) and revoked.cause is Cause.TOKEN_REVOKED
