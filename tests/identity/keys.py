"""Keys, key sets and tokens for the identity tests, made here with `cryptography`.

Keys are generated once per test session (RSA generation takes a moment) and cached.
`token()` signs with PyJWT; `unsigned()` and `hmac_signed()` build the tokens an
attacker would, by hand, because PyJWT (rightly) refuses to make them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
ISSUER = "https://id.example.com"
AUDIENCE = "docs-api"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@cache
def rsa_key(name: str = "rsa-1", bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key per name (cached: `rsa_key("a") is rsa_key("a")`)."""
    del name  # only part of the cache key
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(name: str = "ec-1", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    del name
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
    return ec.generate_private_key(curves[curve])


@cache
def ed_key(name: str = "ed-1") -> ed25519.Ed25519PrivateKey:
    del name
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key, with `kid` and any extra members."""
    pub = key.public_key()
    jwk: dict[str, Any]
    if isinstance(pub, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at NOW; `name=None` removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": T - 60,
        "nbf": T - 60,
        "exp": T + 600,
        "jti": "tok-1",
        "scope": "documents:read documents:write",
        "tenant": "acme",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    key: PrivateKey | None = None,
    kid: str | None = "rsa-1",
    alg: str = "RS256",
    headers: dict[str, Any] | None = None,
    **claim_overrides: Any,
) -> str:
    """A signed JWT (RS256 with `rsa_key()` unless told otherwise)."""
    hdr = dict(headers or {})
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(claims(**claim_overrides), key or rsa_key(), algorithm=alg, headers=hdr)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(
    header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b""
) -> str:
    """A token assembled by hand: `alg: none` and friends."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand, e.g. with an RSA public key's PEM as the secret (alg confusion)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
