"""Authentication: who is asking, established from a bearer JWT, an API key or a session.

Kept apart from authorization: resolvers here produce an `Identity` (a subject plus
how it was established) or an `AuthnFailure` whose cause is for the audit log only.
Nothing here decides about resources; nothing in the engine knows about credentials.

    resolver.py    the Resolver protocol, and the Authenticator that picks a credential
    http.py        where credentials sit in HTTP headers and cookies
    jwt.py         bearer JWTs (claims, mapping, revocation hook)
    jwks.py        key sets from a file or URL, cached, refreshed on unknown kid
    revocation.py  the revoked-token list, in memory, re-read without false denials
    apikeys.py     `pdp_<prefix>_<secret>` keys: HMAC-peppered, scoped, rotated
    sessions.py    opaque session ids: absolute expiry, idle timeout, rolling renewal
    result.py      Identity, AuthnFailure, Cause, Credential
"""

from __future__ import annotations

from pdp.identity.resolver import Authenticator, Resolver
from pdp.identity.result import (
    PUBLIC_MESSAGE,
    AuthnFailure,
    AuthnResult,
    Cause,
    Credential,
    CredentialKind,
    Identity,
)

__all__ = [
    "PUBLIC_MESSAGE",
    "Authenticator",
    "AuthnFailure",
    "AuthnResult",
    "Cause",
    "Credential",
    "CredentialKind",
    "Identity",
    "Resolver",
]
