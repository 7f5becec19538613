"""Where credentials sit in an HTTP request, and taking them out.

Shared by the Envoy mapping and anything else that sees raw HTTP headers. Header
names are expected lower-cased (as HTTP/2 and Envoy give them) with every value of
a repeated header kept, in order, so that duplicates can be detected.

- `Authorization: Bearer <token>`: a JWT, or an API key when it has the API key
  format (`pdp_...`; a JWT always starts with `eyJ`), so machine clients may use the
  standard header too.
- the configured API key header (default `x-api-key`).
- the configured session cookie (default `pdp_session`).

Anything else in `Authorization` (Basic, Digest, ...) is not ours and is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdp.identity.apikeys import looks_like_api_key
from pdp.identity.result import Credential, CredentialKind

# Headers that carry credentials in every configuration: never shown to policies,
# never recorded in the audit log.
ALWAYS_SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie"})


@dataclass(frozen=True, slots=True)
class CredentialLocations:
    """Which headers and cookies carry which credentials."""

    bearer: bool = True
    api_key_header: str | None = "x-api-key"
    api_key_in_bearer: bool = True
    session_cookie: str | None = "pdp_session"

    def __post_init__(self) -> None:
        if self.api_key_header is not None:
            object.__setattr__(self, "api_key_header", self.api_key_header.lower())

    def sensitive_headers(self) -> frozenset[str]:
        """Header names that carry credentials: kept from context and audit records."""
        extra = {self.api_key_header} if self.api_key_header else set()
        return ALWAYS_SENSITIVE | extra


def credentials_from_headers(
    headers: Mapping[str, Sequence[str]], where: CredentialLocations
) -> list[Credential]:
    """Every credential the headers carry, duplicates included (the authenticator
    refuses a kind presented twice)."""
    out: list[Credential] = []
    if where.bearer:
        for value in headers.get("authorization", ()):
            token = bearer_token(value)
            if token is None:
                continue
            if where.api_key_in_bearer and looks_like_api_key(token):
                out.append(Credential(CredentialKind.API_KEY, token))
            else:
                out.append(Credential(CredentialKind.BEARER, token))
    if where.api_key_header:
        for value in headers.get(where.api_key_header, ()):
            out.append(Credential(CredentialKind.API_KEY, value.strip()))
    if where.session_cookie:
        for value in headers.get("cookie", ()):
            for name, cookie in parse_cookie_header(value):
                if name == where.session_cookie:
                    out.append(Credential(CredentialKind.SESSION, cookie))
    return out


def bearer_token(value: str) -> str | None:
    """The token of `Bearer <token>` (scheme case-insensitive, RFC 7235), else None.

    An empty token is returned as "" so that it fails as malformed rather than
    reading as "no credential".
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip()


def parse_cookie_header(value: str) -> list[tuple[str, str]]:
    """`a=1; b=2` → [("a", "1"), ("b", "2")], every pair in order, duplicates kept.

    Deliberately simple (RFC 6265 §5.4 as browsers send it) and not
    `http.cookies.SimpleCookie`, which silently keeps only the last of two cookies
    with the same name: that is exactly the case we must see to refuse it.

    `,` separates pairs too: a cookie value never contains one (RFC 6265 §4.1.1
    cookie-octet), and a proxy that received several `Cookie` lines may have joined
    them with a comma, as it does for other repeated headers.
    """
    pairs: list[tuple[str, str]] = []
    for part in value.replace(",", ";").split(";"):
        name, eq, val = part.strip().partition("=")
        if not eq or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        pairs.append((name.strip(), val))
    return pairs
