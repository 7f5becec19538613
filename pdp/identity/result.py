"""What authentication answers: an `Identity`, or an `AuthnFailure` with its real cause.

Authentication (who is asking) is kept apart from authorization (may they): a
resolver turns a raw credential into one of these two values and never decides
anything about resources. Failures are values, not exceptions, like decisions.

The cause of a failure (`token_expired`, `key_unknown`, `session_idle`, ...) is for
the audit log only. Whatever the cause, the outward answer is the same generic
"authentication required": telling a client *why* would tell an attacker whether a
user, key or session exists, or which part of a forged token was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pdp.engine.request import Subject

# The one message any client ever sees for a failed authentication.
PUBLIC_MESSAGE = "authentication required"


class CredentialKind(StrEnum):
    """How a caller proves who it is; each kind has at most one resolver."""

    BEARER = "bearer"  # a JWT in `Authorization: Bearer ...` (stateless, with revocation)
    API_KEY = "apikey"  # `pdp_<prefix>_<secret>` (machines)
    SESSION = "session"  # an opaque session id in a cookie (browsers, stateful)


class Cause(StrEnum):
    """Why authentication failed; stable codes, recorded in the audit log only."""

    # Any kind.
    NO_CREDENTIAL = "no_credential"  # nothing we accept was presented
    AMBIGUOUS = "ambiguous_credentials"  # the same kind presented twice (e.g. two cookies)
    STORE_UNAVAILABLE = "store_unavailable"  # the key/session/revocation store failed
    INTERNAL_ERROR = "internal_error"  # a bug of ours; logged with its traceback
    # Bearer tokens (JWT).
    TOKEN_MALFORMED = "token_malformed"  # not a compact JWS, bad JSON, unsupported header
    ALG_NOT_ALLOWED = "alg_not_allowed"  # `none`, HS*, or anything off the allow-list
    UNKNOWN_KID = "unknown_kid"  # no key in the JWKS for this kid/alg, even after a refresh
    JWKS_UNAVAILABLE = "jwks_unavailable"  # the key set could never be loaded, or is too old
    BAD_SIGNATURE = "bad_signature"
    WRONG_TOKEN_TYPE = "wrong_token_type"  # `typ` not on the configured list (e.g. an ID token)
    TOKEN_EXPIRED = "token_expired"  # `exp` passed (beyond the leeway)
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"  # `nbf` (or `iat`) in the future
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    MISSING_CLAIM = "missing_claim"  # `exp`, `iss`, `aud`, the subject or type claim absent
    BAD_CLAIM = "bad_claim"  # a claim of the wrong type, or not a usable subject id/type
    TOKEN_REVOKED = "token_revoked"  # its `jti`, or every token of its subject before a time
    # API keys.
    KEY_MALFORMED = "key_malformed"
    KEY_UNKNOWN = "key_unknown"  # no key with this prefix
    KEY_MISMATCH = "key_mismatch"  # the prefix exists, the secret is wrong
    KEY_EXPIRED = "key_expired"
    KEY_ROTATED = "key_rotated"  # replaced by a newer key, and the overlap window is over
    KEY_REVOKED = "key_revoked"
    # Sessions.
    SESSION_MALFORMED = "session_malformed"
    SESSION_UNKNOWN = "session_unknown"
    SESSION_EXPIRED = "session_expired"  # past its absolute lifetime
    SESSION_IDLE = "session_idle"  # unused for longer than its idle timeout
    SESSION_REVOKED = "session_revoked"


@dataclass(frozen=True, slots=True)
class Credential:
    """A raw credential taken from a request. The value is a secret: it is never shown."""

    kind: CredentialKind
    value: str = field(repr=False)

    def __repr__(self) -> str:
        # INVARIANT: no repr, log line or audit record ever carries the secret.
        return f"Credential({self.kind.value}, <{len(self.value)} chars>)"


@dataclass(frozen=True, slots=True)
class Identity:
    """An established subject, and what the audit log should know about how.

    `credential_id` is a public handle of the credential, never the secret: a token's
    `jti`, an API key's prefix, a session's handle (a prefix of its hash).
    """

    subject: Subject
    kind: CredentialKind
    credential_id: str = ""
    scopes: tuple[str, ...] = ()
    expires_at: datetime | None = None
    issuer: str | None = None

    ok: ClassVar[bool] = True  # so callers may test `result.ok` instead of isinstance

    def context(self) -> dict[str, Any]:
        """`context.authn` for policies: method, credential handle, scopes, issuer, expiry."""
        out: dict[str, Any] = {"method": self.kind.value, "scopes": list(self.scopes)}
        if self.credential_id:
            out["credential"] = self.credential_id
        if self.issuer:
            out["issuer"] = self.issuer
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at.isoformat().replace("+00:00", "Z")
        return out

    def audit(self) -> dict[str, Any]:
        """The audit log's `authn` section for a success."""
        out: dict[str, Any] = {"result": "ok", "method": self.kind.value}
        if self.credential_id:
            out["credential"] = self.credential_id
        return out


@dataclass(frozen=True, slots=True)
class AuthnFailure:
    """No identity could be established, and the real reason (for the audit log only).

    `credential_id` names the credential when that is safe (a key prefix, an
    unverified `jti` or `kid`); `detail` is a short note for people reading the log.
    Neither ever reaches the client: see `PUBLIC_MESSAGE`.
    """

    cause: Cause
    kind: CredentialKind | None = None
    credential_id: str = ""
    detail: str = ""

    ok: ClassVar[bool] = False

    def audit(self) -> dict[str, Any]:
        """The audit log's `authn` section for a failure."""
        out: dict[str, Any] = {"result": "failed", "cause": self.cause.value}
        if self.kind is not None:
            out["method"] = self.kind.value
        if self.credential_id:
            out["credential"] = self.credential_id
        if self.detail:
            out["detail"] = self.detail
        return out


AuthnResult = Identity | AuthnFailure


# Subject types follow the bindings' `type:id` syntax; ids may be anything printable
# without whitespace, so that `type:id` stays one token in files, logs and headers.
_TYPE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@+]*$")
_ID_RE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")
MAX_SUBJECT_ID = 256


def subject_problem(subject_type: object, subject_id: object) -> str | None:
    """Why (`type`, `id`) cannot name a subject, or None when it can.

    Identities flow into bindings lookups, audit records and the `x-pdp-subject`
    header sent upstream, so control characters and whitespace are refused here,
    once, rather than escaped everywhere.
    """
    if not isinstance(subject_type, str) or not _TYPE_RE.match(subject_type):
        return "subject type must be a name such as `user`"
    if not isinstance(subject_id, str) or not subject_id:
        return "subject id must be a non-empty string"
    if len(subject_id) > MAX_SUBJECT_ID:
        return f"subject id longer than {MAX_SUBJECT_ID} characters"
    if not _ID_RE.match(subject_id):
        return "subject id contains whitespace or control characters"
    return None


def clip(text: object, limit: int = 80) -> str:
    """Attacker-supplied text made safe for one audit field: printable, bounded."""
    s = text if isinstance(text, str) else repr(text)
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def without_none(props: Mapping[str, Any]) -> dict[str, Any]:
    """Properties without None values (a missing attribute should read as absent)."""
    return {k: v for k, v in props.items() if v is not None}
