"""The server's authenticator: `[identity]` settings → resolvers over the SQL store.

Built once at start-up by the composition root (`pdp.server.app`) and shared by the
Envoy endpoint and the pdp.v1 raw-credential path, so that a credential means the
same thing on both. API keys, sessions and token revocations live in the same
database as the role bindings (`store.url`), in their own tables; the store is
opened here only when one of them is configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from pdp.identity.apikeys import ApiKeyResolver, KeyHasher
from pdp.identity.http import CredentialLocations
from pdp.identity.jwks import JwksCache, file_source, url_source
from pdp.identity.jwt import ClaimMapping, JwtResolver, JwtSettings
from pdp.identity.resolver import Authenticator, Resolver
from pdp.identity.result import CredentialKind
from pdp.identity.revocation import RevocationCache
from pdp.identity.sessions import SessionResolver
from pdp.server.config import IdentityConfig, ServerConfig

log = logging.getLogger("pdp.server")

# How long a bearer check may wait for the revocation list to be read, when the copy
# in hand is too old to use (after a quiet spell) or there is none yet; past it the
# token is refused (`store_unavailable`). Envoy gives a whole check 0.25 s by default.
REVOCATION_WAIT = 1.0


class IdentitySetupError(Exception):
    """The identity settings cannot be put to work (the store cannot be opened)."""


@dataclass
class ServerIdentity:
    """The authenticator, where credentials sit in HTTP requests, and what to close."""

    authenticator: Authenticator
    locations: CredentialLocations
    store: object | None = None  # a pdp.store.sql.SqlStore when one was opened

    def close(self) -> None:
        """Release the store's connections (once, at shutdown)."""
        from pdp.store.sql import SqlStore

        if isinstance(self.store, SqlStore):
            self.store.close()
        self.store = None


def credential_locations(cfg: IdentityConfig) -> CredentialLocations:
    """Which headers and cookies carry which credentials, for the configured kinds only."""
    return CredentialLocations(
        bearer=cfg.jwt.enabled or (cfg.apikeys.enabled and cfg.apikeys.in_bearer),
        api_key_header=cfg.apikeys.header if cfg.apikeys.enabled else None,
        api_key_in_bearer=cfg.apikeys.enabled and cfg.apikeys.in_bearer,
        session_cookie=cfg.sessions.cookie if cfg.sessions.enabled else None,
    )


def build_identity(cfg: ServerConfig) -> ServerIdentity:
    """The resolvers `cfg.identity` configures (possibly none), over `cfg.store_url`."""
    ident = cfg.identity
    store = None
    # Every resolver reads the store: API keys and sessions live there, and so does
    # the bearer tokens' revocation list.
    if ident.enabled:
        from pdp.store.config import redact
        from pdp.store.errors import StoreError, StoreUnavailable
        from pdp.store.sql import SqlStore

        try:
            store = SqlStore(cfg.store_url)
        except StoreUnavailable as exc:
            # Down right now: start anyway, as the role store does. Until the database
            # answers, every credential is refused (cause `store_unavailable`, audited);
            # the resolvers connect again on each use, so this heals by itself.
            log.error(
                "identity: the credential store at %s cannot be reached (%s); "
                "credentials are refused until it can",
                redact(cfg.store_url),
                exc.message,
            )
            store = SqlStore(cfg.store_url, check_schema=False)
        except StoreError as exc:  # reachable but unusable (e.g. not migrated): a setting
            raise IdentitySetupError(
                f"identity: the credential store at {redact(cfg.store_url)} cannot be used: "
                f"{exc.message}"
            ) from None
    resolvers: list[Resolver] = []
    try:
        if ident.jwt.enabled:
            assert store is not None
            resolvers.append(_jwt_resolver(ident, store))
        if ident.apikeys.enabled:
            from pdp.store.identity import SqlApiKeys

            assert store is not None
            hasher = KeyHasher(ident.apikeys.pepper)
            resolvers.append(ApiKeyResolver(SqlApiKeys(store), hasher))
        if ident.sessions.enabled:
            from pdp.store.identity import SqlSessions

            assert store is not None
            s = ident.sessions
            resolvers.append(
                SessionResolver(
                    SqlSessions(store),
                    renew_after=timedelta(seconds=s.renew_after),
                    max_idle=timedelta(seconds=s.idle_timeout) if s.idle_timeout else None,
                )
            )
    except BaseException:
        if store is not None:
            store.close()
        raise
    order = [CredentialKind(k) for k in ident.order]
    authenticator = Authenticator(resolvers, order)
    if resolvers:
        log.info("identity: accepting %s", ", ".join(r.kind.value for r in resolvers))
    return ServerIdentity(authenticator, credential_locations(ident), store)


def _jwt_resolver(ident: IdentityConfig, store: object) -> JwtResolver:
    from pdp.store.identity import SqlTokenRevocations
    from pdp.store.sql import SqlStore

    assert isinstance(store, SqlStore)
    j = ident.jwt
    settings = JwtSettings(
        issuer=j.issuer,
        audiences=j.audiences,
        algorithms=j.algorithms,
        leeway=j.leeway,
        token_types=j.token_types,
        claims=ClaimMapping(
            subject_id=j.subject_claim,
            subject_type=j.subject_type,
            type_claim=j.type_claim or None,
            allowed_types=j.allowed_types,
            properties=MappingProxyType(dict(j.properties)),
            scopes=j.scopes_claim or None,
        ),
    )
    fetch = file_source(j.jwks_file) if j.jwks_file else url_source(j.jwks_url)
    keys = JwksCache(
        fetch,
        algorithms=j.algorithms,
        ttl=j.jwks_ttl,
        min_refresh_interval=j.jwks_min_refresh,
        name=j.jwks_file or j.jwks_url,
    )
    revocations = SqlTokenRevocations(store)
    revoked = RevocationCache(
        lambda: revocations.snapshot(j.issuer),
        refresh_interval=j.revocation_refresh,
        max_staleness=max(60.0, 12 * j.revocation_refresh),
        wait=REVOCATION_WAIT,
    )
    return JwtResolver(settings, keys, is_revoked=revoked)
