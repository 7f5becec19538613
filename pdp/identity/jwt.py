"""Bearer JWTs: stateless identities, verified against an issuer's key set.

Verification, in order (the first failure is the cause recorded):

1. shape: a compact JWS of three base64url parts, at most `max_token_bytes`; no
   `crit` header (we implement no extensions, RFC 7515 §4.1.11) → `token_malformed`
2. `alg` on the allow-list. `none` and HS* are not even supported (see
   `jwks.ALGORITHM_KEYS`) → `alg_not_allowed`
3. a key for (`kid`, `alg`) in the key set, refreshing it once if needed
   → `unknown_kid` / `jwks_unavailable`
4. the signature, by PyJWT with a key bound to that one algorithm → `bad_signature`;
   then, when `token_types` is set, the (signed) `typ` header on it, so that an ID
   token cannot pass for an access token (RFC 9068 `at+jwt`) → `wrong_token_type`
5. `iss` equal to the configured issuer → `wrong_issuer`; `aud` naming one of the
   configured audiences → `wrong_audience`; `exp` required and not passed, `nbf` and
   `iat` not in the future, each with `leeway` seconds of tolerance for clock skew
   → `token_expired` / `token_not_yet_valid`; a claim absent → `missing_claim`
6. the subject claims mapped to a subject id, type and properties: the subject (or
   type) claim absent → `missing_claim`; present but not a usable id or type, or
   scopes that are not a string or a list of strings → `bad_claim`
7. the revocation check (by `jti`, or by subject and issue time) → `token_revoked`

The claims are checked here rather than by PyJWT so that they are checked against
the request's clock (`now`, like every decision) and each failure has its own cause.
PyJWT (a well-kept JOSE library) does the cryptography: decoding, key parsing and
signature verification.

Revocation makes the stateless token hybrid: `is_revoked(jti, subject, issued_at)`
is any callable; the server gives a `revocation.RevocationCache` over the SQL store's
list (`pdp tokens revoke`); `MemoryRevocations` is the in-memory version.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidAlgorithmError, InvalidKeyError, InvalidSignatureError, PyJWTError

from pdp.engine.request import Subject
from pdp.identity.jwks import SUPPORTED_ALGORITHMS, JwksError, KeySource
from pdp.identity.result import (
    AuthnFailure,
    AuthnResult,
    Cause,
    CredentialKind,
    Identity,
    clip,
    subject_problem,
    without_none,
)

log = logging.getLogger("pdp.identity")

_SEGMENT = r"[A-Za-z0-9_-]+"
# The signature may be empty so that `alg: none` tokens get as far as the header
# check and are recorded as what they are (`alg_not_allowed`).
_COMPACT_JWS = re.compile(rf"^{_SEGMENT}\.{_SEGMENT}\.[A-Za-z0-9_-]*$")
MAX_LEEWAY = 300.0


class RevocationCheck(Protocol):
    """Whether a verified token has been revoked.

    `subject` is the mapped subject's `type:id`; `issued_at` is the token's `iat`
    (None when it has none: a subject-wide revocation must then count it revoked).
    May raise when the store cannot be reached: the token is then refused.
    """

    def __call__(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool: ...


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How claims become a subject.

    `subject_id` and the values of `properties` are claim paths (`sub`,
    `realm_access.roles`); `subject_type` is fixed unless `type_claim` names a claim
    whose value must be one of `allowed_types`. `scopes` names the claim holding the
    token's scopes, a space-separated string (`scope`, RFC 8693) or a list (`scp`).
    """

    subject_id: str = "sub"
    subject_type: str = "user"
    type_claim: str | None = None
    allowed_types: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    scopes: str | None = "scope"


def media_type(typ: str) -> str:
    """`typ` as RFC 7515 §4.1.9 compares it: case-insensitive, `application/` optional."""
    t = typ.strip().lower()
    return t.removeprefix("application/")


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """One trusted issuer: who it is, which audiences and algorithms, how much skew."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    max_token_bytes: int = 8192
    claims: ClaimMapping = field(default_factory=ClaimMapping)
    # Accepted `typ` header values, compared as media types (case-insensitive, with or
    # without `application/`); empty: any, as most issuers set none or `JWT`.
    token_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("`issuer` is required")
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError("`audiences` must name at least one audience")
        if not self.algorithms:
            raise ValueError("`algorithms` must name at least one algorithm")
        for alg in self.algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"algorithm `{alg}` is not supported; use "
                    + ", ".join(sorted(SUPPORTED_ALGORITHMS))
                    + " (`none` and HMAC algorithms are refused on purpose)"
                )
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"`leeway` must be from 0 to {MAX_LEEWAY:g} seconds")
        if self.claims.type_claim and not self.claims.allowed_types:
            raise ValueError("`type_claim` needs `allowed_types`")
        problem = subject_problem(self.claims.subject_type, "x")
        if problem:
            raise ValueError(f"`subject_type`: {problem}")


class MemoryRevocations:
    """A `RevocationCheck` in memory: revoked `jti`s, and per-subject cut-off times."""

    def __init__(self) -> None:
        self._jtis: set[str] = set()
        self._before: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def revoke_token(self, jti: str) -> None:
        with self._lock:
            self._jtis.add(jti)

    def revoke_subject(self, subject: str, before: datetime) -> None:
        """Revoke every token of `subject` (`type:id`) issued before `before`."""
        with self._lock:
            self._before[subject] = max(before, self._before.get(subject, before))

    def __call__(self, jti: str | None, subject: str, issued_at: datetime | None) -> bool:
        if jti is not None and jti in self._jtis:
            return True
        cutoff = self._before.get(subject)
        return cutoff is not None and (issued_at is None or issued_at < cutoff)


class JwtResolver:
    """Authenticates bearer JWTs of one issuer."""

    kind = CredentialKind.BEARER

    def __init__(
        self,
        settings: JwtSettings,
        keys: KeySource,
        *,
        is_revoked: RevocationCheck | None = None,
    ) -> None:
        self._s = settings
        self._keys = keys
        self._is_revoked = is_revoked
        self._allowed = frozenset(settings.algorithms)
        self._types = frozenset(media_type(t) for t in settings.token_types)
        self._jws = PyJWS(
            algorithms=list(settings.algorithms),
            options={"verify_signature": True, "enforce_minimum_key_length": True},
        )

    @property
    def settings(self) -> JwtSettings:
        return self._s

    def resolve(self, credential: str, now: datetime) -> AuthnResult:
        s = self._s
        fail = _Fail(self.kind)
        token = credential
        if len(token) > s.max_token_bytes or not _COMPACT_JWS.match(token):
            return fail(Cause.TOKEN_MALFORMED, detail="not a compact JWS")
        try:
            header = self._jws.get_unverified_header(token)
        except PyJWTError as exc:
            return fail(Cause.TOKEN_MALFORMED, detail=str(exc))
        alg = header.get("alg")
        kid = header.get("kid")
        kid_note = f"kid={clip(kid, 40)}" if kid is not None else "no kid"
        if "crit" in header:
            return fail(Cause.TOKEN_MALFORMED, detail="`crit` header not supported")
        if not isinstance(alg, str) or alg not in self._allowed:
            return fail(Cause.ALG_NOT_ALLOWED, detail=f"alg={clip(alg, 20)}")
        if kid is not None and not isinstance(kid, str):
            return fail(Cause.TOKEN_MALFORMED, detail="`kid` is not a string")
        try:
            key = self._keys.key(kid, alg)
        except JwksError as exc:
            return fail(Cause.JWKS_UNAVAILABLE, detail=str(exc))
        if key is None:
            return fail(Cause.UNKNOWN_KID, detail=f"{kid_note}, alg={alg}")
        try:
            raw = self._jws.decode_complete(token, key=key, algorithms=[alg])["payload"]
        except InvalidSignatureError:
            return fail(Cause.BAD_SIGNATURE, detail=kid_note)
        except (InvalidAlgorithmError, InvalidKeyError) as exc:
            # Only reachable if the key and the token disagree on the algorithm.
            return fail(Cause.ALG_NOT_ALLOWED, detail=f"{kid_note}: {exc}")
        except PyJWTError as exc:
            return fail(Cause.TOKEN_MALFORMED, detail=str(exc))
        if s.token_types:
            typ = header.get("typ")
            if not isinstance(typ, str) or media_type(typ) not in self._types:
                return fail(Cause.WRONG_TOKEN_TYPE, detail=f"typ={clip(typ, 30)}")
        try:
            claims = json.loads(raw)
        except (ValueError, RecursionError):
            return fail(Cause.TOKEN_MALFORMED, detail="payload is not JSON")
        if not isinstance(claims, dict):
            return fail(Cause.TOKEN_MALFORMED, detail="payload is not a JSON object")
        # From here on the token is authentic: its jti may name it in the audit log.
        jti = claims.get("jti")
        fail.credential_id = clip(jti, 64) if isinstance(jti, str) else ""
        problem = self._check_claims(claims, now.timestamp())
        if problem is not None:
            return fail(*problem)
        mapped = self._subject(claims)
        if not isinstance(mapped, _Mapped):
            return fail(*mapped)
        subject, scopes = mapped.subject, mapped.scopes
        issued_at = _time(claims.get("iat"))
        if self._is_revoked is not None:
            try:
                revoked = self._is_revoked(
                    jti if isinstance(jti, str) else None, subject.key, issued_at
                )
            except Exception:
                log.exception("token revocation check failed")
                return fail(Cause.STORE_UNAVAILABLE, detail="revocation check failed")
            if revoked:
                return fail(Cause.TOKEN_REVOKED, detail=f"subject {subject.key}")
        return Identity(
            subject,
            self.kind,
            credential_id=fail.credential_id,
            scopes=scopes,
            expires_at=_time(claims.get("exp")),
            issuer=s.issuer,
        )

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> tuple[Cause, str] | None:
        s = self._s
        iss = claims.get("iss")
        if iss is None:
            return Cause.MISSING_CLAIM, "iss"
        if iss != s.issuer:
            return Cause.WRONG_ISSUER, f"iss={clip(iss)}"
        aud = claims.get("aud")
        if aud is None:
            return Cause.MISSING_CLAIM, "aud"
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            return Cause.BAD_CLAIM, "aud is not a string or a list of strings"
        if not set(auds) & set(s.audiences):
            return Cause.WRONG_AUDIENCE, f"aud={clip(auds)}"
        exp = claims.get("exp")
        if exp is None:
            return Cause.MISSING_CLAIM, "exp"
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _number(claims[name]):
                return Cause.BAD_CLAIM, f"{name} is not a number"
        if now >= exp + s.leeway:
            return Cause.TOKEN_EXPIRED, f"expired {now - exp:.0f} s ago"
        nbf = claims.get("nbf")
        if nbf is not None and now + s.leeway < nbf:
            return Cause.TOKEN_NOT_YET_VALID, f"nbf in {nbf - now:.0f} s"
        iat = claims.get("iat")
        if iat is not None and now + s.leeway < iat:
            return Cause.TOKEN_NOT_YET_VALID, f"iat in {iat - now:.0f} s"
        return None

    def _subject(self, claims: Mapping[str, Any]) -> _Mapped | tuple[Cause, str]:
        """The subject and scopes the claims name, or what is wrong with them."""
        m = self._s.claims
        sid = claim(claims, m.subject_id)
        if sid is None:
            return Cause.MISSING_CLAIM, m.subject_id
        stype: object = m.subject_type
        if m.type_claim:
            stype = claim(claims, m.type_claim)
            if stype is None:
                return Cause.MISSING_CLAIM, m.type_claim
            if stype not in m.allowed_types:
                return (
                    Cause.BAD_CLAIM,
                    f"`{m.type_claim}` is {clip(stype)}, not one of the allowed types",
                )
        problem = subject_problem(stype, sid)
        if problem:
            return Cause.BAD_CLAIM, problem
        assert isinstance(stype, str) and isinstance(sid, str)  # checked just above
        props = without_none({name: claim(claims, path) for name, path in m.properties.items()})
        scopes: tuple[str, ...] = ()
        if m.scopes:
            raw = claim(claims, m.scopes)
            if isinstance(raw, str):
                scopes = tuple(raw.split())
            elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
                scopes = tuple(raw)
            elif raw is not None:
                return Cause.BAD_CLAIM, f"`{m.scopes}` is not a string or a list of strings"
        return _Mapped(Subject(stype, sid, MappingProxyType(props)), scopes)


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path, or None. A claim whose own name contains
    dots (`https://example.com/roles`) is found whole before the path is split."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(v: object) -> bool:
    # JSON allows NaN and Infinity as Python reads it: an `exp` of NaN would compare
    # as never expired, so only finite numbers count.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _time(v: object) -> datetime | None:
    """A NumericDate claim as an aware datetime; None when absent or out of range."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        return datetime.fromtimestamp(v, UTC)
    except (OverflowError, ValueError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class _Mapped:
    """What the claims say about who is asking."""

    subject: Subject
    scopes: tuple[str, ...]


class _Fail:
    """Builds failures of one resolution; the credential id is set once it is trusted."""

    def __init__(self, kind: CredentialKind) -> None:
        self.kind = kind
        self.credential_id = ""

    def __call__(self, cause: Cause, detail: str = "") -> AuthnFailure:
        return AuthnFailure(cause, self.kind, self.credential_id, clip(detail, 160))
