"""The `Resolver` protocol, and the `Authenticator` that picks one per request.

A resolver knows one kind of credential (bearer JWT, API key, session id) and turns
a raw value into an `Identity` or an `AuthnFailure`. The authenticator holds the
configured resolvers and decides which credential of a request counts:

- only kinds with a configured resolver are considered; others are ignored;
- if several kinds are present, the first in `order` wins and the rest are ignored:
  a failed credential never falls through to another one, so the outcome does not
  depend on which credential an attacker chooses to break;
- the same kind presented twice (two `Authorization` headers, two session cookies:
  "cookie tossing") is refused as ambiguous rather than guessed at.

Any exception a resolver lets out is a bug of ours: logged, and answered as a
failure (`internal_error`), never as an identity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from pdp.identity.result import AuthnFailure, AuthnResult, Cause, Credential, CredentialKind

log = logging.getLogger("pdp.identity")

DEFAULT_ORDER: tuple[CredentialKind, ...] = (
    CredentialKind.BEARER,
    CredentialKind.API_KEY,
    CredentialKind.SESSION,
)


class Resolver(Protocol):
    """Turns one kind of raw credential into an identity, or a failure with its cause.

    Implementations must be safe to call from many threads, must not raise for a bad
    credential (that is a failure value), and must do the same work whether or not
    the key or session they look up exists (no timing oracle).
    """

    @property
    def kind(self) -> CredentialKind:
        """The kind of credential this resolver understands."""
        ...

    def resolve(self, credential: str, now: datetime) -> AuthnResult:
        """Authenticate `credential` at time `now`."""
        ...


class Authenticator:
    """The configured resolvers, and which credential of a request to believe."""

    def __init__(
        self, resolvers: Iterable[Resolver], order: Sequence[CredentialKind] = DEFAULT_ORDER
    ) -> None:
        self._resolvers: dict[CredentialKind, Resolver] = {}
        for r in resolvers:
            if r.kind in self._resolvers:
                raise ValueError(f"two resolvers for `{r.kind.value}` credentials")
            self._resolvers[r.kind] = r
        missing = [k for k in self._resolvers if k not in order]
        if missing:
            raise ValueError(f"`{missing[0].value}` is configured but not in the order")
        self._order = tuple(k for k in order if k in self._resolvers)

    @property
    def kinds(self) -> frozenset[CredentialKind]:
        """The credential kinds this authenticator accepts."""
        return frozenset(self._resolvers)

    def authenticate(self, credentials: Sequence[Credential], now: datetime) -> AuthnResult:
        """The identity the request's credentials establish, or why there is none."""
        for kind in self._order:
            values = [c.value for c in credentials if c.kind is kind]
            if not values:
                continue
            if len(values) > 1:
                return AuthnFailure(Cause.AMBIGUOUS, kind, detail=f"{len(values)} presented")
            try:
                return self._resolvers[kind].resolve(values[0], now)
            except Exception:
                log.exception("internal error while resolving a %s credential", kind.value)
                return AuthnFailure(Cause.INTERNAL_ERROR, kind)
        return AuthnFailure(Cause.NO_CREDENTIAL)
